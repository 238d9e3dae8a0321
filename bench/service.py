"""The service as a process of its own, for the benches that talk to it over HTTP.

    async with running_service(postgres_url=None, env={...}) as api:   # "http://127.0.0.1:PORT"
        ...

SQLite in a temporary directory, or a scratch database on the PostgreSQL server of
`postgres_url` (created and dropped); `context-manager serve` on free loopback ports; ready
once /readyz answers; stopped (SIGTERM, then SIGKILL) whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx


def free_port() -> int:
    from tests.conftest import free_port as pick

    return pick()


@contextlib.asynccontextmanager
async def scratch_postgres(postgres_url: str) -> AsyncIterator[str]:
    """A database of our own on `postgres_url`'s server; yields its asyncpg SQLAlchemy URL."""
    plain = postgres_url.replace("+asyncpg", "")
    name = f"cm_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(plain)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = plain.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(plain)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def wait_ready(url: str, process: asyncio.subprocess.Process, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise SystemExit(f"the service exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise SystemExit("the service did not become ready")


@contextlib.asynccontextmanager
async def running_service(
    postgres_url: str | None = None, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[str, str]]:
    """`context-manager serve` on its own database; yields (API base URL, database URL)."""
    with tempfile.TemporaryDirectory(prefix="cm-bench-") as scratch:
        async with contextlib.AsyncExitStack() as stack:
            if postgres_url:
                database_url = await stack.enter_async_context(scratch_postgres(postgres_url))
            else:
                database_url = f"sqlite+aiosqlite:///{Path(scratch) / 'bench.db'}"
            api_port = free_port()
            settings = {
                "DATABASE_URL": database_url,
                "MIGRATE_ON_START": "true",
                "HOST": "127.0.0.1",
                "API_PORT": str(api_port),
                "WS_PORT": str(free_port()),
                "DASHBOARD_PORT": str(free_port()),
                "LOG_LEVEL": "warning",
                **(env or {}),
            }
            inherited = {
                k: v for k, v in os.environ.items() if k.upper() not in settings and k != "CI"
            }
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "app.cli",
                "serve",
                cwd=scratch,
                env={**inherited, **settings},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
            )
            api = f"http://127.0.0.1:{api_port}"
            try:
                await wait_ready(api, process)
                yield api, database_url
            finally:
                process.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), 20)
                if process.returncode is None:
                    process.kill()
                    await process.wait()
