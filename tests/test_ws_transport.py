"""The WebSocket port's own uvicorn protocol (app/realtime/uvicorn_protocol.py), over raw sockets.

The handshake is validated from the headers httptools parsed (RFC 6455 §4.2.1); frames go
through websockets' sans-I/O parser; inbound messages wait in a bounded inbox. These tests
speak bytes on a real socket so that what a non-Python client would send is what is checked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.main import create_app
from app.realtime.connection import QueueSink
from app.realtime.manager import ConnectionManager
from app.realtime.uvicorn_protocol import (
    INBOX_HIGH,
    INBOX_HIGH_BYTES,
    UpgradeProtocol,
    WebSocketProtocol,
    accept_key,
)
from app.server import Service
from tests.conftest import ClientFactory, ServiceFactory, SettingsFactory

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def test_accept_key_matches_rfc_6455_example() -> None:
    assert accept_key(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def _request(
    path: str = "/", *, key: bytes | None = KEY, version: bytes = b"13", method: str = "GET"
) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1".encode(),
        b"Host: 127.0.0.1",
        b"Upgrade: websocket",
        b"Connection: keep-alive, Upgrade",
        b"Sec-WebSocket-Version: " + version,
    ]
    if key is not None:
        lines.append(b"Sec-WebSocket-Key: " + key)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 §5.2)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    size = len(payload)
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", size)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", size)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = await asyncio.wait_for(
                self.reader.readexactly(int(headers["content-length"])), 5
            )
        return int(status_line.split()[1]), headers, body

    async def frame(self) -> tuple[int, bytes]:
        """The next server frame (servers never mask): opcode and payload."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), 5)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await asyncio.wait_for(self.reader.readexactly(size), 5)

    async def message(self) -> dict[str, object]:
        opcode, payload = await self.frame()
        assert opcode == 1, (opcode, payload)
        decoded: dict[str, object] = orjson.loads(payload)
        return decoded

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 5) == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


_open: list[RawSocket] = []


@pytest.fixture(autouse=True)
async def _close_sockets() -> AsyncIterator[None]:
    yield
    while _open:
        await _open.pop().close()


async def raw(service: Service, request: bytes) -> RawSocket:
    reader, writer = await asyncio.open_connection("127.0.0.1", service.settings.ws_port)
    writer.write(request)
    sock = RawSocket(reader, writer)
    _open.append(sock)
    return sock


async def opened(service: Service, path: str = "/") -> RawSocket:
    sock = await raw(service, _request(path))
    status, headers, _ = await sock.response()
    assert status == 101
    assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert headers["upgrade"].lower() == "websocket"
    assert (await sock.message())["type"] == "connected"
    return sock


@pytest.mark.parametrize(
    ("request_bytes", "status", "needle"),
    [
        (_request(key=None), 400, b"Sec-WebSocket-Key"),
        (_request(key=b"not base64!"), 400, b"Sec-WebSocket-Key"),
        (_request(key=base64.b64encode(b"too short")), 400, b"Sec-WebSocket-Key"),
        (_request(version=b"8"), 426, b"Sec-WebSocket-Version"),
        (_request(method="POST"), 400, b"GET"),
    ],
    ids=["no-key", "bad-key", "short-key", "old-version", "post"],
)
async def test_invalid_handshakes_get_a_clear_http_error(
    service: Service, request_bytes: bytes, status: int, needle: bytes
) -> None:
    sock = await raw(service, request_bytes)
    got, headers, body = await sock.response()
    assert got == status
    assert needle in body and body.startswith(b"Failed to open a WebSocket connection")
    if status == 426:
        assert headers["sec-websocket-version"] == "13"
    assert await sock.closed()
    # Nothing was registered for them.
    assert service.manager.snapshot()["connections"]["current"] == 0


async def test_non_ascii_request_target_is_refused(service: Service) -> None:
    sock = await raw(service, _request("/w\u00e9"))
    status, _, _ = await sock.response()
    assert status == 400
    assert await sock.closed()


async def test_percent_encoded_path_and_query_reach_the_endpoint(
    service: Service, ws_client: ClientFactory
) -> None:
    client = await ws_client(service, "/w%73", agent_id="agent-7")
    reply = await client.request({"type": "auth", "id": "a"})
    assert reply["agent_id"] == "agent-7"


async def test_plain_http_on_the_websocket_port_still_works(service: Service) -> None:
    sock = await raw(service, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, _, body = await sock.response()
    assert status == 200 and orjson.loads(body)["status"] == "healthy"


async def test_fragmented_message_is_one_message(service: Service) -> None:
    sock = await opened(service)
    text = orjson.dumps({"type": "auth", "id": "frag"})
    sock.writer.write(
        _frame(0x1, text[:5], fin=False) + _frame(0x0, text[5:9], fin=False) + _frame(0x0, text[9:])
    )
    reply = await sock.message()
    assert reply["type"] == "ack" and reply["id"] == "frag"


async def test_invalid_utf8_text_closes_with_1007(service: Service) -> None:
    sock = await opened(service)
    sock.writer.write(_frame(0x1, b'{"type": "ping"\xff}'))
    opcode, payload = await sock.frame()
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 1007
    assert await sock.closed()


async def _forgotten(service: Service) -> None:
    """Until the service no longer counts the connection (2 s at most)."""
    for _ in range(100):
        if service.manager.snapshot()["connections"]["current"] == 0:
            break
        await asyncio.sleep(0.02)
    assert service.manager.snapshot()["connections"]["current"] == 0


def _unmasked(opcode: int, payload: bytes) -> bytes:
    return bytes([0x80 | opcode, len(payload)]) + payload


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (_unmasked(0x1, b'{"type": "ping"}'), 1002),  # a client must mask
        (bytes([0xC1]) + _frame(0x1, b"{}")[1:], 1002),  # RSV1 without an extension
        (_frame(0x3, b"x"), 1002),  # a reserved opcode
        (_frame(0x9, b"p", fin=False), 1002),  # a fragmented control frame
        (_frame(0x9, b"p" * 126), 1002),  # a control frame over 125 bytes
        (_frame(0x0, b"x"), 1002),  # a continuation with no message begun
        (_frame(0x1, b"{", fin=False) + _frame(0x1, b"}"), 1002),  # a new message mid-message
        (_frame(0x8, b"\x03"), 1002),  # a close payload of one byte
        (_frame(0x8, struct.pack("!H", 1005)), 1002),  # a code no peer may send
        (_frame(0x8, struct.pack("!H", 1000) + b"\xff"), 1007),  # a reason not UTF-8
        (_frame(0x1, b"{", fin=False) + _frame(0x8, struct.pack("!H", 1000)), 1002),
    ],
    ids=[
        "unmasked",
        "rsv1",
        "opcode-3",
        "fragmented-ping",
        "long-ping",
        "lone-continuation",
        "no-continuation",
        "short-close",
        "close-1005",
        "close-reason-not-utf8",
        "close-mid-message",
    ],
)
async def test_a_frame_the_protocol_forbids_fails_the_connection(
    service: Service, data: bytes, code: int
) -> None:
    """RFC 6455 §7.1.7: our close frame with the code, then the socket closed; the service
    forgets the connection."""
    sock = await opened(service)
    sock.writer.write(data)
    opcode, payload = await sock.frame()
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == code, payload
    assert await sock.closed()
    await _forgotten(service)


async def test_a_frame_over_max_frame_bytes_is_refused_from_its_header(
    start_service: ServiceFactory,
) -> None:
    """1009 as soon as the header says the frame is too large: its payload is never awaited."""
    service = await start_service(max_message_bytes=1024, max_frame_bytes=16 * 1024)
    sock = await opened(service)
    sock.writer.write(bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 1 << 40) + os.urandom(4))
    opcode, payload = await sock.frame()
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 1009


async def test_frames_split_at_every_byte_arrive_whole(service: Service) -> None:
    """A message (two fragments and a ping between them) written one byte at a time."""
    sock = await opened(service)
    text = orjson.dumps({"type": "auth", "id": "bytes"})
    data = _frame(0x1, text[:7], fin=False) + _frame(0x9, b"pp") + _frame(0x0, text[7:])
    for i in range(len(data)):
        sock.writer.write(data[i : i + 1])
        await sock.writer.drain()
        await asyncio.sleep(0.001)
    assert await sock.frame() == (0xA, b"pp")
    reply = await sock.message()
    assert reply["type"] == "ack" and reply["id"] == "bytes"


async def test_protocol_ping_is_answered_with_its_payload(service: Service) -> None:
    sock = await opened(service)
    sock.writer.write(_frame(0x9, b"abcd"))
    assert await sock.frame() == (0xA, b"abcd")


async def test_a_burst_beyond_the_inbox_is_answered_whole_and_in_order(service: Service) -> None:
    # Many more messages than the inbox holds, in one write: reading pauses and resumes,
    # and every one is answered, in order.
    sock = await opened(service)
    count = INBOX_HIGH * 20
    sock.writer.write(
        b"".join(_frame(0x1, orjson.dumps({"type": "auth", "id": i})) for i in range(count))
    )
    ids = [(await sock.message())["id"] for _ in range(count)]
    assert ids == list(range(count))
    # And the connection reads on afterwards.
    sock.writer.write(_frame(0x1, orjson.dumps({"type": "auth", "id": "after"})))
    assert (await sock.message())["id"] == "after"


async def test_client_close_is_echoed_and_the_client_forgotten(service: Service) -> None:
    sock = await opened(service)
    sock.writer.write(_frame(0x8, struct.pack("!H", 1000) + b"bye"))
    opcode, payload = await sock.frame()
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 1000
    assert await sock.closed()
    await _forgotten(service)


async def test_dropped_socket_is_forgotten(service: Service) -> None:
    sock = await opened(service)
    sock.writer.transport.abort()
    await _forgotten(service)


async def test_draining_service_refuses_upgrades_with_403(start_service: ServiceFactory) -> None:
    service = await start_service()
    service.manager.draining = True
    sock = await raw(service, _request())
    status, _, _ = await sock.response()
    assert status == 403
    assert await sock.closed()


async def test_large_messages_cross_the_wire_whole(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    # A message of several TCP reads (and a 64-bit length) is reassembled by the parser.
    service = await start_service(max_message_bytes=200_000, max_frame_bytes=300_000)
    sender = await ws_client(service)
    receiver = await ws_client(service)
    await receiver.subscribe("topics/big")
    data = "y" * 150_000
    reply = await sender.request(
        {"type": "publish", "channel": "topics/big", "event": "a.b", "data": data, "id": 1}
    )
    assert reply["success"] is True
    assert (await receiver.next_event("a.b"))["data"] == data


async def test_closed_connection_raises_for_client(
    service: Service, ws_client: ClientFactory
) -> None:
    client = await ws_client(service)
    await service.manager.drain(1012, reconnect_within=0.0)
    with pytest.raises(ConnectionClosed) as info:
        await client.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1012


@pytest.mark.parametrize(("deflate", "sink"), [(False, QueueSink), (True, QueueSink)])
async def test_the_surface_under_plain_uvicorn(
    make_settings: SettingsFactory, deflate: bool, sink: type
) -> None:
    """Served by uvicorn's own protocols (as `uvicorn --ws websockets-sansio` would), the
    surface works through the queue: uvicorn offers no sink in the scope (transport.py), and
    the service no longer writes into another server's protocol."""
    settings = make_settings()
    app = create_app(settings)
    config = uvicorn.Config(
        app.state.surfaces["ws"],
        host="127.0.0.1",
        port=settings.ws_port,
        lifespan="on",
        ws="websockets-sansio",
        ws_per_message_deflate=deflate,
        log_config=None,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done()
            await asyncio.sleep(0.01)
        url = f"ws://127.0.0.1:{settings.ws_port}/"
        async with connect(url) as receiver, connect(url) as sender:
            for ws in (receiver, sender):
                assert orjson.loads(await ws.recv())["type"] == "connected"
            manager: ConnectionManager = app.state.manager
            assert all(isinstance(c.sink, sink) for c in manager.connections.values())
            await receiver.send(orjson.dumps({"type": "subscribe", "channel": "topics/u", "id": 1}))
            assert orjson.loads(await receiver.recv())["id"] == 1
            for n in range(5):
                publish = {"type": "publish", "channel": "topics/u", "event": "a.b", "data": n}
                await sender.send(orjson.dumps({**publish, "id": n}))
                assert orjson.loads(await sender.recv())["id"] == n
            got = [orjson.loads(await receiver.recv())["data"] for _ in range(5)]
            assert got == list(range(5))
    finally:
        server.should_exit = True
        await serving


async def test_inbox_bounds_what_a_client_can_queue(make_settings: SettingsFactory) -> None:
    """While the application does not read, the socket is paused once INBOX_HIGH_BYTES wait
    (large messages) — the rest stays in the kernel — and every message arrives in order after."""
    release = asyncio.Event()
    protocols: list[WebSocketProtocol] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        protocols.append(send.__self__)
        await release.wait()
        sizes: list[int] = []
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            sizes.append(len(message["text"]))
            if len(sizes) == 40:
                await send({"type": "websocket.send", "text": orjson.dumps(sizes).decode()})

    port = make_settings().ws_port
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=UpgradeProtocol, lifespan="off", log_config=None
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done()
            await asyncio.sleep(0.01)
        async with connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
            # 40 messages of 100 KB: 4 MB, far beyond the inbox's 256 KiB.
            for n in range(40):
                await ws.send(str(n % 10) * 100_000)
            await asyncio.sleep(0.5)
            (proto,) = protocols
            assert proto.read_paused
            # The high mark (256 KiB), plus at most one read and one message past it.
            assert INBOX_HIGH_BYTES == 256 * 1024
            assert proto._inbox_bytes <= 256 * 1024 * 2 + 100_000
            release.set()
            sizes = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            assert sizes == [100_000] * 40
            assert not proto.read_paused and proto._inbox_bytes == 0
    finally:
        release.set()  # a failed assertion above must not leave the application waiting
        server.should_exit = True
        await serving
