"""Schemathesis over /openapi.json of a running service: no 5xx, and every response (status,
content type, body) is the one the document promises; invalid input is refused.

Bounded: 5 examples per operation and phase, one worker, a fixed seed — 10 to 30 s per
database. It drives the endpoints of the data API (sessions, agents, tasks, subtasks,
messages, actions, events, metrics).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.core.security import Role, TokenCodec
from tests.conftest import ServiceFactory
from tests.databases import BACKENDS, data_settings, fresh_database

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ]
)
PATHS = r"^/api/(sessions|agents|tasks|subtasks|messages|actions|events|metrics|channels)"


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request, tmp_path) as url:
        yield url


async def test_schemathesis_finds_nothing(
    database_url: str, start_service: ServiceFactory, tmp_path: Path
) -> None:
    service = await start_service(**data_settings(database_url), log_level="error")
    await _run_schemathesis(service.settings.api_port, tmp_path, [])


async def test_schemathesis_in_token_mode(start_service: ServiceFactory, tmp_path: Path) -> None:
    """The same run with AUTH_MODE=token and an admin's Bearer token (SQLite)."""
    secret = "z" * 64
    url = f"sqlite+aiosqlite:///{tmp_path / 'token.db'}"
    service = await start_service(
        **data_settings(url), log_level="error", auth_mode="token", secret_key=secret
    )
    token = TokenCodec(service.settings).create("fuzzer", role=Role.ADMIN, ttl=600)
    await _run_schemathesis(
        service.settings.api_port, tmp_path, ["--header", f"Authorization: Bearer {token}"]
    )


async def _run_schemathesis(port: int, tmp_path: Path, extra: list[str]) -> None:
    schema_url = f"http://127.0.0.1:{port}/openapi.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        schema_url,
        *extra,
        "--include-path-regex",
        PATHS,
        "--checks",
        CHECKS,
        "--max-examples",
        "5",
        "--seed",
        "1",
        "--workers",
        "1",
        "--no-color",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,  # schemathesis may write a report or cache beside it
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=100)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-6000:]
    assert "passed" in text and "Tested: " in text
