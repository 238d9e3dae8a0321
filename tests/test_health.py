"""GET /health and /stats on the WebSocket port, and GET /health on the API port."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from app.server import Service
from tests.conftest import ClientFactory, ServiceFactory, free_port

SEED_HEALTH_KEYS = {
    "status",
    "type",
    "port",
    "connectedClients",
    "activeChannels",
    "channelStats",
    "timestamp",
}


async def get(port: int, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        return await http.get(path)


async def ws_health(service: Service) -> dict[str, Any]:
    response = await get(service.settings.ws_port, "/health")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    return body


async def ws_stats(service: Service) -> dict[str, Any]:
    response = await get(service.settings.ws_port, "/stats")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def assert_iso_now(value: str) -> None:
    """ISO 8601 in UTC, as the seed's "2026-01-30T12:00:00.000Z", and close to now."""
    assert value.endswith("Z"), value
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - parsed) < timedelta(minutes=1)


async def test_ws_health_has_exactly_the_seed_keys(service: Service) -> None:
    body = await ws_health(service)
    assert set(body) == SEED_HEALTH_KEYS
    assert body["status"] == "healthy"
    assert body["type"] == "websocket"
    assert body["port"] == service.settings.ws_port
    assert body["connectedClients"] == 0
    assert body["activeChannels"] == 0
    assert body["channelStats"] == {}
    assert_iso_now(body["timestamp"])


async def test_ws_health_counts_clients_and_channels(
    service: Service, ws_client: ClientFactory
) -> None:
    clients = [await ws_client(service) for _ in range(5)]
    for client in clients:
        await client.subscribe("global")
    for client in clients[:2]:
        await client.subscribe("metrics")
    await clients[0].subscribe("topics/deployments")
    body = await ws_health(service)
    assert body["connectedClients"] == 5
    assert body["activeChannels"] == 3
    assert body["channelStats"] == {"global": 5, "metrics": 2, "topics/deployments": 1}

    await clients[0].close()
    async with asyncio.timeout(5):
        while (await ws_health(service))["connectedClients"] != 4:
            await asyncio.sleep(0.02)
    body = await ws_health(service)
    assert body["channelStats"] == {"global": 4, "metrics": 1}
    assert body["activeChannels"] == 2


async def test_stats_counts_what_happened(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(metrics_interval=3600)
    before = (await ws_stats(service))["publications"]["total"]
    a = await ws_client(service)
    b = await ws_client(service)
    await a.subscribe("topics/x")
    await b.subscribe("topics/x")
    for n in range(30):
        await a.send({"type": "publish", "channel": "topics/x", "event": "x.y", "data": n})
    await a.send({"type": "ping"})
    await a.send("{bad")
    await a.send({"type": "nope"})
    await a.send({"type": "subscribe", "channel": "bad/"})
    received = 0
    while received < 30:
        received += "event" in await b.recv()
    await b.close()
    async with asyncio.timeout(5):
        while len(service.manager.connections) != 1:
            await asyncio.sleep(0.01)
    # Wait for a's replies too, so that every counter is final.
    replies = [await a.recv() for _ in range(30 + 4)]
    assert sum("event" in r for r in replies) == 30

    stats = await ws_stats(service)
    assert stats["uptime_seconds"] > 0
    assert stats["connections"]["opened"] == 2
    assert stats["connections"]["closed"] == 1
    assert stats["connections"]["current"] == 1
    assert stats["subscriptions"]["total"] == 2
    assert stats["subscriptions"]["current"] == 1
    messages = stats["messages"]
    assert messages["in"]["subscribe"] >= 2 and messages["in"]["publish"] == 30
    assert messages["in"]["ping"] == 1
    assert messages["out"]["connected"] == 2
    assert messages["out"]["ack"] == 2
    assert messages["out"]["pong"] == 1
    assert messages["out"]["error"] == 3
    assert messages["out"]["event"] == 60  # 30 publications × 2 subscribers
    assert stats["errors"] == {"INVALID_JSON": 1, "UNKNOWN_TYPE": 1, "INVALID_CHANNEL": 1}
    assert stats["publications"]["total"] - before == 30
    assert isinstance(stats["publications"]["per_second"], int | float)
    assert stats["channels"] == {"active": 1, "subscribers": {"topics/x": 1}}

    # The rate covers whole seconds: within a couple of seconds the 30 show up in it.
    async with asyncio.timeout(5):
        while (await ws_stats(service))["publications"]["per_second"] <= 0:
            await asyncio.sleep(0.1)


async def test_ws_port_serves_nothing_else(service: Service) -> None:
    assert (await get(service.settings.ws_port, "/nope")).status_code == 404
    assert (await get(service.settings.ws_port, "/docs")).status_code == 404


async def test_api_health_with_reachable_database(service: Service) -> None:
    response = await get(service.settings.api_port, "/health")
    assert response.status_code == 200
    body = response.json()
    assert body["type"] == "api"
    assert body["status"] == "healthy"
    assert body["database"] == "reachable"
    assert body["port"] == service.settings.api_port
    assert_iso_now(body["timestamp"])


class TcpProxy:
    """A loopback TCP forwarder we can cut and restore: a database outage on demand."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def cut(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def test_api_health_is_503_while_the_database_is_unreachable(
    start_service: ServiceFactory, migrated_postgres_url: str
) -> None:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(migrated_postgres_url)
    proxy = TcpProxy(parts.port or 5432)
    await proxy.start()
    try:
        url = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
        service = await start_service(database_url=url)
        assert (await get(service.settings.api_port, "/health")).status_code == 200

        await proxy.cut()
        response = await get(service.settings.api_port, "/health")
        assert response.status_code == 503
        body = response.json()
        assert body["type"] == "api"
        assert body["status"] == "unhealthy"
        assert body["database"] == "unreachable"
        # The WebSocket server does not need the database to be healthy.
        assert (await ws_health(service))["status"] == "healthy"

        # The database comes back: so does the API's health.
        await proxy.start()
        async with asyncio.timeout(10):
            while (await get(service.settings.api_port, "/health")).status_code != 200:
                await asyncio.sleep(0.1)
    finally:
        await proxy.cut()


async def test_api_health_on_postgres(
    start_service: ServiceFactory, migrated_postgres_url: str
) -> None:
    service = await start_service(database_url=migrated_postgres_url)
    response = await get(service.settings.api_port, "/health")
    assert response.status_code == 200
    assert response.json()["database"] == "reachable"


async def test_api_docs_are_served(service: Service) -> None:
    docs = await get(service.settings.api_port, "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = (await get(service.settings.api_port, "/openapi.json")).json()
    assert "/health" in schema["paths"]
