"""What a client can take before and below the WebSocket protocol: heads, connections, frames.

Raw sockets against a real `Service` (app/core/http_protocol.py, app/core/admission.py,
app/realtime/uvicorn_protocol.py): request heads bounded in bytes, header lines and time on
all three ports; connections not yet upgraded count against the per-address limit while
another address is still served; the descriptor budget keeps `/health` answering; ping and
continuation floods are closed; `/health` stays fast while a connection floods frames.
127.0.0.2 is a second source address (any 127/8 address is local on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.core.config import Settings
from app.server import Service
from tests.conftest import ServiceFactory, free_port, ws_url

OTHER = "127.0.0.2"
ALL_PORTS = ("api", "ws", "dashboard")
UPGRADE_HEAD = (
    b"GET / HTTP/1.1\r\n"
    b"Host: 127.0.0.1\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


def _port(service: Service, surface: str) -> int:
    settings = service.settings
    return {
        "api": settings.api_port,
        "ws": settings.ws_port,
        "dashboard": settings.dashboard_port,
    }[surface]


def _frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 §5.2); payloads here are < 126 bytes."""
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + mask + masked


class Raw:
    """One raw TCP connection: bytes out, bytes in, with timeouts."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def status(self, timeout: float = 5.0) -> int:
        """The status code of the next response."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        return int(head.split(b" ", 2)[1])

    async def until_closed(self, timeout: float = 5.0) -> bytes:
        """Everything the server sends until it closes (a reset counts as closed)."""
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := await asyncio.wait_for(self.reader.read(65536), timeout):
                chunks.append(chunk)
        return b"".join(chunks)

    async def close_code(self, timeout: float = 5.0) -> int | None:
        """Read frames until a close frame: its code; None when the socket was reset first
        (a client still sending when the server closes gets a reset, and may lose the frame).
        """
        try:
            return await self._close_code(timeout)
        except (ConnectionResetError, asyncio.IncompleteReadError):
            return None

    async def _close_code(self, timeout: float) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            first, second = await asyncio.wait_for(
                self.reader.readexactly(2), deadline - loop.time()
            )
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(size)
            if first & 0x0F == 0x8:
                code: int = struct.unpack("!H", payload[:2])[0]
                return code

    def close(self) -> None:
        self.writer.transport.abort()


_open: list[Raw] = []


@pytest.fixture(autouse=True)
async def _close_raw() -> AsyncIterator[None]:
    yield
    while _open:
        _open.pop().close()


async def raw(port: int, source: str = "127.0.0.1", rcvbuf: int | None = None) -> Raw:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    connection = Raw(reader, writer)
    _open.append(connection)
    return connection


async def opened(service: Service, **kwargs: int | str | None) -> Raw:
    """A raw, upgraded WebSocket connection whose 101 and `connected` frame are read."""
    connection = await raw(service.settings.ws_port, **kwargs)  # type: ignore[arg-type]
    await connection.send(UPGRADE_HEAD + b"\r\n")
    assert await connection.status() == 101
    first, second = await asyncio.wait_for(connection.reader.readexactly(2), 5)
    await connection.reader.readexactly(second & 0x7F)  # {"type": "connected", ...}
    return connection


async def health(port: int, source: str = OTHER, timeout: float = 5.0) -> float:
    """Seconds `/health` took from `source`; fails past `timeout`."""
    started = time.monotonic()
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(transport=transport, timeout=timeout) as http:
        response = await http.get(f"http://127.0.0.1:{port}/health")
    assert response.status_code == 200
    return time.monotonic() - started


# --- request heads, on every port ------------------------------------------------------------


@pytest.mark.parametrize("surface", ALL_PORTS)
async def test_a_head_over_max_request_head_bytes_gets_431_and_is_closed(
    start_service: ServiceFactory, surface: str
) -> None:
    service = await start_service(surfaces=ALL_PORTS)
    connection = await raw(_port(service, surface))
    # The attack: an upgrade request line, then header lines without end.
    await connection.send(UPGRADE_HEAD + b"X-A: b\r\n" * 4000)  # 32 KB, never finished
    answer = await connection.until_closed()
    assert answer.startswith(b"HTTP/1.1 431 ")


@pytest.mark.parametrize("surface", ALL_PORTS)
async def test_one_huge_header_value_gets_431(start_service: ServiceFactory, surface: str) -> None:
    service = await start_service(surfaces=ALL_PORTS)
    connection = await raw(_port(service, surface))
    await connection.send(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 100_000)
    assert (await connection.until_closed()).startswith(b"HTTP/1.1 431 ")


@pytest.mark.parametrize("surface", ALL_PORTS)
async def test_more_than_max_request_headers_gets_431(
    start_service: ServiceFactory, surface: str
) -> None:
    service = await start_service(surfaces=ALL_PORTS, max_request_headers=20)
    port = _port(service, surface)
    lines = b"".join(b"X-%d: v\r\n" % n for n in range(20))
    fine = await raw(port)
    await fine.send(b"GET /health HTTP/1.1\r\n" + lines + b"\r\n")  # Host is not required
    assert await fine.status() != 431
    over = await raw(port)
    await over.send(b"GET /health HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
    assert (await over.until_closed()).startswith(b"HTTP/1.1 431 ")


async def test_a_large_body_in_the_same_read_as_its_head_is_not_a_large_head(
    start_service: ServiceFactory,
) -> None:
    service = await start_service()
    connection = await raw(service.settings.api_port)
    body = b"{" + b" " * 200_000 + b"}"
    await connection.send(
        b"POST /api/tasks HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body) + body
    )
    assert await connection.status() not in (431, 400)


async def test_a_slow_head_is_closed_after_request_head_timeout(
    start_service: ServiceFactory,
) -> None:
    service = await start_service(request_head_timeout=0.5)
    connection = await raw(service.settings.ws_port)
    started = time.monotonic()
    await connection.send(UPGRADE_HEAD)

    async def trickle() -> None:
        with contextlib.suppress(OSError):
            for n in range(50):  # a header line every 0.1 s: 5 s if nothing stops it
                await asyncio.sleep(0.1)
                await connection.send(b"X-%d: b\r\n" % n)

    trickling = asyncio.create_task(trickle())
    try:
        answer = await connection.until_closed(timeout=4)
    finally:
        trickling.cancel()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 3
    silent = await raw(service.settings.api_port)
    assert await silent.until_closed(timeout=4) == b""  # connected, sent nothing: just closed


async def test_each_request_on_a_kept_alive_connection_gets_its_own_head_timer(
    start_service: ServiceFactory,
) -> None:
    service = await start_service(request_head_timeout=0.5)
    connection = await raw(service.settings.ws_port)
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    await connection.send(request)
    assert await connection.status() == 200
    await asyncio.sleep(0.8)  # idle longer than the head timeout, shorter than keep-alive (5 s)
    await connection.reader.read(65536)  # the first response's body
    await connection.send(request)
    assert await connection.status() == 200
    await connection.send(b"GET /health HTTP/1.1\r\n")  # a third head, never finished
    assert b"HTTP/1.1 408 " in await connection.until_closed(timeout=4)


# --- connections before they are WebSockets --------------------------------------------------


async def test_connections_not_yet_upgraded_count_against_the_per_address_limit(
    start_service: ServiceFactory,
) -> None:
    service = await start_service(max_connections_per_ip=3)
    port = service.settings.ws_port
    for _ in range(3):
        half = await raw(port)
        await half.send(UPGRADE_HEAD)  # half-sent upgrade requests
    await asyncio.sleep(0.1)
    # One more is let in, to be told why: a WebSocket gets 3504 ...
    with pytest.raises(ConnectionClosed) as closed:
        async with connect(ws_url(service), open_timeout=5) as ws:
            await asyncio.wait_for(ws.recv(), 5)
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 3504
    # ... a request 503; past that a connection is closed before a byte is read.
    for _ in range(100):
        if service.guard.open == 3:
            break
        await asyncio.sleep(0.02)
    slot = await raw(port)
    await asyncio.sleep(0.05)
    refused = await raw(port)
    assert await refused.until_closed() == b""
    await slot.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await slot.status() == 503
    # Another address is served as usual.
    await health(port)
    async with connect(ws_url(service), open_timeout=5, local_addr=(OTHER, 0)) as ws:
        assert b"connected" in (await asyncio.wait_for(ws.recv(), 5)).encode()


async def test_the_limit_is_given_back_when_connections_close(
    start_service: ServiceFactory,
) -> None:
    service = await start_service(max_connections_per_ip=2)
    port = service.settings.ws_port
    halves = [await raw(port) for _ in range(3)]
    for half in halves:
        await half.send(UPGRADE_HEAD)
    refused = await raw(port)
    assert await refused.until_closed() == b""
    for half in halves:
        half.close()
    for _ in range(100):
        if service.guard.open == 0:
            break
        await asyncio.sleep(0.02)
    assert service.guard.open == 0
    await health(port, source="127.0.0.1")


def _node_environment(tmp_path: Path) -> dict[str, str]:
    """The parent's environment without anything Settings would read, plus the node's."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    ports = {"WS_PORT": free_port(), "API_PORT": free_port(), "DASHBOARD_PORT": free_port()}
    env.update({k: str(v) for k, v in ports.items()})
    env.update(
        HOST="127.0.0.1",
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'fd.db'}",
        MAX_CONNECTIONS_PER_IP="100000",  # the budget, not the per-address limit, is tested
        REQUEST_HEAD_TIMEOUT="60",
        FD_RESERVE="100",
        LOG_LEVEL="warning",
    )
    return env


async def test_the_descriptor_budget_keeps_health_answering(tmp_path: Path) -> None:
    """A node with RLIMIT_NOFILE 300 and 400 half-sent heads from one address still answers
    `/health` from another: the oldest waiting heads are closed to make room (on main the
    node ran out of descriptors and refused every new connection)."""
    limit = 300
    env = _node_environment(tmp_path)

    def lower_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "ws",
        cwd=tmp_path,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=lower_limit,
    )
    port = int(env["WS_PORT"])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                await health(port, timeout=1)
                break
            except (httpx.HTTPError, OSError):
                assert time.monotonic() < deadline, "the node did not come up"
                await asyncio.sleep(0.1)
        for _ in range(400):
            with contextlib.suppress(OSError):
                half = await raw(port)
                await half.send(UPGRADE_HEAD)
        await asyncio.sleep(0.5)
        for _ in range(3):
            assert await health(port, timeout=5) < 3
        async with connect(f"ws://127.0.0.1:{port}/", open_timeout=5) as ws:
            assert b"connected" in (await asyncio.wait_for(ws.recv(), 5)).encode()
    finally:
        process.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 10)
        if process.returncode is None:
            process.kill()
            await process.wait()


# --- frames -----------------------------------------------------------------------------------


async def test_a_ping_flood_is_closed_at_the_frame_rate(start_service: ServiceFactory) -> None:
    service = await start_service()
    connection = await opened(service)
    with contextlib.suppress(OSError):
        await connection.send(_frame(0x9, b"p" * 125) * 5000)
    assert await connection.close_code() in (1008, None)
    await _forgotten(service)
    assert service.manager.stats.close_codes[1008] == 1


async def test_a_client_that_pings_and_never_reads_is_closed_as_slow(
    start_service: ServiceFactory,
) -> None:
    """Below the frame rate, pongs pile up behind a client that does not read: they count
    against OUTBOUND_QUEUE_BYTES like any frame, and the client is closed with 3008."""
    service = await start_service(
        outbound_queue_bytes=64 * 1024, frame_rate=1_000_000, frame_burst=1_000_000
    )
    connection = await opened(service, rcvbuf=4096)
    ping = _frame(0x9, b"p" * 125) * 1000
    with contextlib.suppress(OSError):
        for _ in range(200):  # 26 MB of pings, far past any socket buffer
            await asyncio.wait_for(connection.send(ping), 5)
    await _forgotten(service)
    assert service.manager.stats.close_codes[3008] == 1
    assert service.manager.stats.slow_consumers == 1


async def test_a_continuation_flood_is_closed_at_max_message_fragments(
    start_service: ServiceFactory,
) -> None:
    service = await start_service(
        max_message_fragments=32, frame_rate=1_000_000, frame_burst=1_000_000
    )
    connection = await opened(service)
    fragments = [_frame(0x0, b"", fin=False) for _ in range(30)]
    await connection.send(_frame(0x1, b"{", fin=False) + b"".join(fragments))
    await connection.send(_frame(0x0, b"}"))  # a message of 32 fragments passes
    with contextlib.suppress(OSError):
        await connection.send(_frame(0x1, b"{", fin=False) + _frame(0x0, b"", fin=False) * 10_000)
    assert await connection.close_code() in (1008, None)
    await _forgotten(service)
    assert service.manager.stats.close_codes[1008] == 1


async def test_health_stays_fast_while_a_client_floods_empty_frames(
    start_service: ServiceFactory,
) -> None:
    """Millions of empty continuation frames at full speed, from a thread (so the flood does
    not share the server's loop): `/health` from another address keeps answering quickly, and
    the flooder is closed."""
    service = await start_service()
    port = service.settings.ws_port
    flooder = socket.create_connection(("127.0.0.1", port))
    flooder.sendall(UPGRADE_HEAD + b"\r\n")
    flood = _frame(0x1, b"x", fin=False) + _frame(0x0, b"", fin=False) * 20_000
    stop = False

    def run() -> None:
        with contextlib.suppress(OSError):
            while not stop:
                flooder.sendall(flood)

    loop = asyncio.get_running_loop()
    sending = loop.run_in_executor(None, run)
    try:
        latencies = []
        for _ in range(10):
            latencies.append(await health(port, timeout=5))
            await asyncio.sleep(0.05)
    finally:
        stop = True
        flooder.close()
        await sending
    assert max(latencies) < 1.0, latencies
    for _ in range(250):  # the server records the close once it has read the flood's end
        if service.manager.stats.close_codes[1008] == 1:
            break
        await asyncio.sleep(0.02)
    assert service.manager.stats.close_codes[1008] == 1


async def _forgotten(service: Service) -> None:
    """Wait until the service holds no WebSocket connection and no client socket."""
    for _ in range(250):
        if not service.manager.connections and service.guard.open == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(
        f"still held: {len(service.manager.connections)} connections, {service.guard.open} sockets"
    )


def test_second_source_address_is_local() -> None:
    """The tests above need 127.0.0.2 (any 127/8 address is local on Linux)."""
    with socket.socket() as sock:
        sock.bind((OTHER, 0))
