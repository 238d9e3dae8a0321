"""Keepalive: the idle timeout (3001), JSON pings, and WebSocket protocol pings both ways."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time

import pytest
from websockets.exceptions import ConnectionClosed

from app.server import Service
from tests.conftest import Client, ClientFactory, ServiceFactory

IDLE = 0.5


async def closed_code(client: Client, timeout: float) -> tuple[int | None, str]:
    """Wait for the server to close `client`; its close code and reason."""
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(timeout):
            while True:
                await client.recv(timeout)
    rcvd = info.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")


async def test_silent_connection_is_closed_with_3001(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(ws_idle_timeout=IDLE)
    client = await ws_client(service, agent_id="sleepy")
    started = time.monotonic()
    code, reason = await closed_code(client, 5)
    elapsed = time.monotonic() - started
    assert code == 3001 and reason == "idle timeout"
    assert IDLE * 0.8 <= elapsed < IDLE + 3, elapsed
    async with asyncio.timeout(5):
        while service.manager.connections:
            await asyncio.sleep(0.01)
    assert service.manager.stats.close_codes[3001] == 1
    assert service.manager.presence.online() == {}


async def test_json_pings_keep_the_connection_open(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(ws_idle_timeout=IDLE)
    pinger = await ws_client(service)
    silent = await ws_client(service)
    deadline = time.monotonic() + IDLE * 3
    while time.monotonic() < deadline:
        await pinger.send({"type": "ping"})
        assert (await pinger.recv())["type"] == "pong"
        await asyncio.sleep(IDLE / 4)
    # Three idle timeouts later the pinger is still there; the silent one is not.
    assert (await closed_code(silent, 1))[0] == 3001
    assert list(service.manager.connections) == [pinger.client_id]
    # Once it stops pinging, it goes the same way.
    assert (await closed_code(pinger, IDLE + 3))[0] == 3001


async def test_any_message_counts_as_activity(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(ws_idle_timeout=IDLE)
    client = await ws_client(service)
    for n in range(6):
        await client.request({"type": "subscribe", "channel": f"topics/t{n}", "id": n})
        await asyncio.sleep(IDLE / 3)
    assert client.client_id in service.manager.connections


async def test_protocol_ping_from_the_client_is_answered(
    service: Service, ws_client: ClientFactory
) -> None:
    client = await ws_client(service)
    for _ in range(3):
        pong = await client.ws.ping()
        latency = await asyncio.wait_for(pong, 2)
        assert latency >= 0


# --- server-side protocol pings, seen from a bare socket -----------------------------------


async def raw_connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket handshake by hand, so that nothing answers the server's pings for us."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def read_frame(reader: asyncio.StreamReader, timeout: float = 5) -> tuple[int, bytes]:
    """(opcode, payload) of the next server frame (server frames are never masked)."""
    async with asyncio.timeout(timeout):
        first, second = await reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await reader.readexactly(8))
        return first & 0x0F, await reader.readexactly(length)


async def test_server_pings_and_drops_a_peer_that_never_pongs(
    start_service: ServiceFactory,
) -> None:
    service = await start_service(ws_ping_interval=0.2, ws_ping_timeout=0.4, ws_idle_timeout=60)
    reader, writer = await raw_connect(service.settings.ws_port)
    try:
        opcode, payload = await read_frame(reader)
        assert opcode == 0x1 and b'"connected"' in payload
        opcode, _ = await read_frame(reader, 2)
        assert opcode == 0x9  # a protocol ping, which we do not answer
        opcode, payload = await read_frame(reader, 3)
        assert opcode == 0x8  # close
        assert struct.unpack("!H", payload[:2])[0] == 1011
        async with asyncio.timeout(5):
            while service.manager.connections:
                await asyncio.sleep(0.01)
    finally:
        writer.close()


async def test_a_peer_that_pongs_stays_connected(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(ws_ping_interval=0.1, ws_ping_timeout=0.3, ws_idle_timeout=60)
    client = await ws_client(service)  # the websockets library answers pings by itself
    await asyncio.sleep(1.0)
    assert client.client_id in service.manager.connections
    await client.send({"type": "ping"})
    assert (await client.recv())["type"] == "pong"
