"""Shared fixtures: real servers on free ports in the test's own event loop, real clients.

PostgreSQL and Redis come from TEST_POSTGRES_URL and TEST_REDIS_URL (`.ci/run` sets both).
Without them a test that needs one is skipped with the reason printed — except under CI=true,
where it fails: CI must never pass by skipping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from app.core.config import Settings
from app.server import Service

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


# Servers get ports below the kernel's ephemeral range (32768–60999 by default): a port the
# kernel hands out itself can be taken by any outgoing connection (every test client makes
# some) between the moment we pick it and the moment the server binds it.
_PORT_LOW, _PORT_HIGH = 20000, 32000
_next_port = _PORT_LOW + (os.getpid() * 7919) % (_PORT_HIGH - _PORT_LOW)


def free_port() -> int:
    """A port free now, outside the ephemeral range, and not handed out before."""
    global _next_port
    for _ in range(_PORT_HIGH - _PORT_LOW):
        port = _next_port
        _next_port = _PORT_LOW + (_next_port + 1 - _PORT_LOW) % (_PORT_HIGH - _PORT_LOW)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


def _reachable(url: str, default_port: int) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 1
        ):
            return True
    except OSError:
        return False


def _require_service(env: str, default_port: int, what: str) -> str:
    url = os.environ.get(env)
    if url and _reachable(url, default_port):
        return url
    reason = f"{what} not available: set {env} to a reachable server" + (
        f" ({url} does not answer)" if url else ""
    )
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@pytest.fixture
def postgres_url() -> str:
    """A PostgreSQL URL (TEST_POSTGRES_URL); skipped locally, failing in CI, when absent."""
    return _require_service("TEST_POSTGRES_URL", 5432, "PostgreSQL")


@pytest.fixture
def redis_url() -> str:
    """A Redis URL (TEST_REDIS_URL); skipped locally, failing in CI, when absent."""
    return _require_service("TEST_REDIS_URL", 6379, "Redis")


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Settings on free ports and a fresh SQLite file; keyword arguments override."""

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "ws_port": free_port(),
            "api_port": free_port(),
            "dashboard_port": free_port(),
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'test.db'}",
            "log_format": "text",
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return factory


ServiceFactory = Callable[..., Awaitable[Service]]


@pytest.fixture
async def start_service(make_settings: SettingsFactory) -> AsyncIterator[ServiceFactory]:
    """Start `Service`s in this loop; all are stopped (gracefully) at the end of the test."""
    started: list[Service] = []

    async def factory(
        settings: Settings | None = None,
        surfaces: tuple[str, ...] = ("api", "ws"),
        **overrides: Any,
    ) -> Service:
        service = Service(settings or make_settings(**overrides), surfaces)
        await service.start()
        started.append(service)
        return service

    yield factory
    for service in reversed(started):
        await service.stop()


@pytest.fixture
async def service(start_service: ServiceFactory) -> Service:
    """One running service (REST API + WebSocket server) on the embedded default."""
    return await start_service()


def ws_url(service: Service, path: str = "/", **query: str) -> str:
    from urllib.parse import urlencode

    qs = f"?{urlencode(query)}" if query else ""
    return f"ws://127.0.0.1:{service.settings.ws_port}{path}{qs}"


class Client:
    """A test client over a real WebSocket: JSON in, JSON out, with timeouts everywhere."""

    def __init__(self, ws: ClientConnection, hello: dict[str, Any]) -> None:
        self.ws = ws
        self.hello = hello
        self.client_id: str = hello["client_id"]

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        if isinstance(message, dict):
            message = orjson.dumps(message).decode()
        await self.ws.send(message)

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        decoded: dict[str, Any] = orjson.loads(raw)
        return decoded

    async def request(self, message: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Send a message with an `id` and return the ack or error for that id."""
        await self.send(message)
        while True:
            reply = await self.recv(timeout)
            if reply.get("id") == message.get("id") and ("type" in reply or "error" in reply):
                if reply.get("type") != "ack" and "error" not in reply:
                    continue
                return reply

    async def subscribe(self, channel: str) -> dict[str, Any]:
        reply = await self.request(
            {"type": "subscribe", "channel": channel, "id": f"sub-{channel}"}
        )
        assert reply.get("success") is True, reply
        return reply

    async def next_event(self, event: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """The next event frame (optionally of one event name), skipping acks and pongs."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            if "event" in frame and (event is None or frame["event"] == event):
                return frame

    async def no_frame(self, within: float = 0.3) -> None:
        """Assert that nothing arrives within `within` seconds."""
        with pytest.raises(TimeoutError):
            frame = await self.recv(within)
            raise AssertionError(f"unexpected frame {frame}")

    async def close(self) -> None:
        await self.ws.close()


ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def ws_client() -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    """Open real WebSocket clients: `await ws_client(service, agent_id=…)`; closed at the end."""
    clients: list[Client] = []

    async def factory(service: Service, path: str = "/", **query: str) -> Client:
        ws = await connect(ws_url(service, path, **query), max_size=None, open_timeout=5)
        hello = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert hello["type"] == "connected"
        client = Client(ws, hello)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        with contextlib.suppress(Exception):
            await client.close()


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    for env, what in (("TEST_POSTGRES_URL", "PostgreSQL"), ("TEST_REDIS_URL", "Redis")):
        url = os.environ.get(env)
        lines.append(f"{what}: {url or f'not configured ({env} unset): its tests will be skipped'}")
    if IN_CI:
        lines.append("CI=true: tests that need a missing service fail instead of skipping")
    return lines


# --- multi-node: a migrated PostgreSQL database of this run's own ------------------------------


async def _create_database(admin_url: str, name: str, drop: bool = False) -> None:
    import asyncpg

    connection = await asyncpg.connect(admin_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        if drop:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def _migrate(url: str) -> None:
    from app.db.engine import create_engine
    from app.db.migrate import migrate

    engine = create_engine(Settings(database_url=url).database_url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


def _run_apart(coroutine: Callable[..., Awaitable[None]], *args: Any) -> None:
    """Run `coroutine(*args)` in its own loop and thread (a fixture may sit in a running loop)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: asyncio.run(coroutine(*args))).result()  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def migrated_postgres_url() -> Iterator[str]:
    """A fresh database on TEST_POSTGRES_URL's server, migrated to head, dropped at the end.

    Tests that need the schema (the PostgreSQL broker, nodes running on PostgreSQL) use it
    instead of the shared `test` database, so they never race another test's schema changes.
    """
    import secrets
    from urllib.parse import urlsplit, urlunsplit

    base = _require_service("TEST_POSTGRES_URL", 5432, "PostgreSQL")
    name = f"cm_test_{os.getpid()}_{secrets.token_hex(3)}"
    parts = urlsplit(base)
    url = urlunsplit(parts._replace(path=f"/{name}"))
    _run_apart(_create_database, base, name)
    try:
        _run_apart(_migrate, url)
        yield url
    finally:
        _run_apart(_create_database, base, name, True)
