"""uvicorn protocol classes of the WebSocket port: one HTTP parse per upgrade, no receive queue.

uvicorn's own path for an upgrade parses the request with httptools, serialises it again and
hands the bytes to its WebSocket protocol, which parses them a second time with websockets'
pure-Python HTTP parser, validates them, and builds a `Response` object with its headers. In
a connect storm that handshake path was 40 % of the server's CPU (docs/performance.md).

* `UpgradeProtocol` is the service's bounded httptools protocol (app/core/http_protocol.py:
  request-head size, header count and time bounds, per-address admission) with one change: an
  upgrade request is handed to `WebSocketProtocol` with the method, target and headers
  httptools already parsed. Plain HTTP requests on the port (`/health`, `/stats`,
  `/metrics`, …) are served as before.
* `WebSocketProtocol` validates the handshake from those headers (RFC 6455 §4.2.1), answers
  with a pre-built `101`, reads the client's frames with `frame_parser.read_frame` and writes
  its own with `frames.encode_frame`, and runs the closing handshake of RFC 6455 §7 as
  websockets' sans-I/O `Protocol` did (which held ≈ 1.3 KB per connection: frame_parser.py).
  It speaks ASGI to the application — `receive` / `send` — so the endpoint runs unchanged on
  any ASGI server; here `receive` reads a deque with one waiter instead of an `asyncio.Queue`
  (the deque exists only while messages wait: an empty one is 760 bytes), and reading from the
  socket pauses only once `INBOX_HIGH` messages or `INBOX_HIGH_BYTES` wait (uvicorn pauses and
  resumes the socket around every message).

Every inbound frame — data, continuation, ping, pong, close — spends a token of the
connection's frame bucket (FRAME_RATE / FRAME_BURST) as it is parsed, and a message has at most
MAX_MESSAGE_FRAGMENTS fragments; past either the connection is closed at once with 1008, so a
read full of tiny frames is cut off at the bucket's end instead of being parsed whole. The
pongs and pings this
protocol writes count against the same outbound bound as data frames (OUTBOUND_QUEUE_BYTES):
a client that sends pings and never reads is closed with 3008, and every close that does not
wait for the peer's reply aborts the socket `CLOSE_GRACE` later, so a peer that never reads
cannot pin what is buffered for it.

The protocol offers the application its sink through the ASGI scope (transport.py): a
`direct_sink.DirectSink` writes pre-encoded frames straight to this protocol's transport.
Used by `app.server.Service` for the WebSocket surface: ``http=UpgradeProtocol``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import enum
import hashlib
import logging
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote

from uvicorn.config import Config
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.server import ServerState

from app.core.admission import ConnectionGuard
from app.core.http_protocol import BoundedHttpProtocol, HeadLimits, plain_response
from app.realtime.frame_parser import (
    INVALID_DATA,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    PROTOCOL_ERROR,
    FrameError,
    parse_close,
    read_frame,
)
from app.realtime.frames import close_payload, encode_frame
from app.realtime.transport import EXTENSION

if TYPE_CHECKING:
    from app.realtime.direct_sink import DirectSink

logger = logging.getLogger("uvicorn.error")

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Reading from the socket pauses while this many received messages, or this many bytes of
# them, wait for the application, and resumes once it has taken them down to the low marks.
# Bounds what one client can make the server hold: one read (≤ 256 KiB) past the high marks.
INBOX_HIGH = 16
INBOX_LOW = 4
INBOX_HIGH_BYTES = 256 * 1024
INBOX_LOW_BYTES = 64 * 1024

# After our close frame, how long the peer has to answer it before the transport is closed.
CLOSE_TIMEOUT = 10.0

# A close that does not wait for the peer's reply (a bound broken, a parser error, an echo):
# how long the peer has to take what is buffered before the socket is aborted.
CLOSE_GRACE = 2.0


@dataclass(frozen=True, slots=True)
class FrameLimits:
    """FRAME_RATE, FRAME_BURST, MAX_MESSAGE_FRAGMENTS, OUTBOUND_QUEUE_BYTES (config.py)."""

    rate: float = 1000.0
    burst: float = 2000.0  # a float: every connection's bucket starts as this same object
    max_fragments: int = 128
    outbound_bytes: int = 4 * 1024 * 1024


class WebSocketState(enum.Enum):
    """Where a `WebSocketProtocol` is between its upgrade request and its socket's end."""

    CONNECTING = "connecting"  # the application has not accepted (or refused) yet
    OPEN = "open"
    CLOSING = "closing"  # our close frame (or an HTTP refusal) is out; reading on for a reply
    CLOSED = "closed"  # the transport is gone


class HandshakeError(Exception):
    """An upgrade request RFC 6455 does not allow; answered with `status` and closed."""

    def __init__(self, status: int, message: str, headers: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


def accept_key(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def check_handshake(
    method: str, raw_path: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[bytes, str, list[str]]:
    """Validate an opening handshake; return its Sec-WebSocket-Key, path and subprotocols.

    uvicorn only hands over requests whose Upgrade is ``websocket`` and whose Connection
    has ``upgrade``; what is left to check is RFC 6455 §4.2.1's method, key and version.
    httptools refuses a non-ASCII target today; checked here so a parser leniency cannot
    turn one into an exception.
    """
    if method != "GET":
        raise HandshakeError(400, f"WebSocket handshake must be GET, not {method}")
    try:
        path = raw_path.decode("ascii")
    except UnicodeDecodeError:
        raise HandshakeError(400, "Request target is not ASCII") from None
    keys: list[bytes] = []
    version: bytes | None = None
    subprotocols: list[str] = []
    for name, value in headers:
        if name == b"sec-websocket-key":
            keys.append(value.strip())
        elif name == b"sec-websocket-version":
            version = value.strip()
        elif name == b"sec-websocket-protocol":
            subprotocols.extend(
                token.strip() for token in value.decode("latin-1").split(",") if token.strip()
            )
    if len(keys) != 1:
        raise HandshakeError(400, "Missing or repeated Sec-WebSocket-Key header")
    key = keys[0]
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except (binascii.Error, ValueError):
        raise HandshakeError(400, "Invalid Sec-WebSocket-Key header") from None
    if version != b"13":
        raise HandshakeError(
            426, "Unsupported Sec-WebSocket-Version", b"sec-websocket-version: 13\r\n"
        )
    return key, path, subprotocols


class UpgradeProtocol(BoundedHttpProtocol):
    """The bounded httptools protocol, handing WebSocket upgrades over without a second parse."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: HeadLimits | None = None,
        guard: ConnectionGuard | None = None,
        frames: FrameLimits | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop, limits=limits, guard=guard)
        self.frame_limits = frames or FrameLimits()

    def _refuses_over_limit(self, upgrade: bool) -> bool:
        # A WebSocket past the per-address limit is told so by the endpoint (close 3504).
        return not upgrade

    def handle_websocket_upgrade(self) -> None:
        self.connections.discard(self)
        protocol = WebSocketProtocol(
            self.config, self.server_state, self.loop, limits=self.frame_limits
        )
        # The addresses are known already (looking them up again makes a socket object).
        protocol.adopt(self.transport, self.server, self.client, self.scheme == "https")
        if self._counted:
            # The guard's count of this connection goes with it to the WebSocket protocol.
            self._counted = False
            protocol.count_in(self.guard, self.address)
        self.transport.set_protocol(protocol)
        protocol.upgrade(cast(dict[str, Any], self.scope), self.url)


class WebSocketProtocol(asyncio.Protocol):
    """One WebSocket connection after its upgrade request (see module docstring)."""

    __slots__ = (
        "config",
        "app",
        "loop",
        "connections",
        "tasks",
        "default_headers",
        "transport",
        "server",
        "client",
        "scheme",
        "max_size",
        "limits",
        "guard",
        "address",
        "sink",
        "state",
        "_accept",
        "close_timer",
        "_abort_timer",
        "read_paused",
        "_buffer",
        "_inbox",
        "_inbox_bytes",
        "_waiter",
        "_writable",
        "_frame_tokens",
        "_frame_stamp",
        "_fragments",
        "_fragment_bytes",
        "_fragment_text",
        "ping_timer",
        "pong_timer",
        "pending_ping_payload",
        "ping_sent_at",
        "last_ping_rtt",
    )

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        loop: asyncio.AbstractEventLoop,
        *,
        limits: FrameLimits | None = None,
    ) -> None:
        self.config = config
        self.app = config.loaded_app
        self.loop = loop
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.default_headers = server_state.default_headers
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.server: tuple[str, int | None] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "ws"
        self.max_size: int = config.ws_max_size
        self.limits = limits = limits or FrameLimits()
        self.guard: ConnectionGuard | None = None
        self.address = ""
        self.sink: DirectSink | None = None
        self.state = WebSocketState.CONNECTING
        self._accept = b""
        self.close_timer: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self.read_paused = False
        # The bytes of a frame not yet complete (None between frames).
        self._buffer: bytearray | None = None
        # Messages the application has not taken (None when there are none).
        self._inbox: collections.deque[dict[str, Any]] | None = None
        self._inbox_bytes = 0  # payload bytes (characters of text) waiting in the inbox
        self._waiter: asyncio.Future[None] | None = None
        # Set while the transport's buffer is above its high-water mark (pause_writing).
        self._writable: asyncio.Future[None] | None = None
        # The frame bucket, inline (two floats, no object per connection): full at the first
        # frame, since the stamp is the epoch of the monotonic clock.
        self._frame_tokens = limits.burst
        self._frame_stamp = 0.0
        self._fragments: list[bytes] | None = None  # a fragmented message's frames so far
        self._fragment_bytes = 0
        self._fragment_text = False
        self.ping_timer: asyncio.TimerHandle | None = None
        self.pong_timer: asyncio.TimerHandle | None = None
        self.pending_ping_payload: bytes | None = None
        self.ping_sent_at = 0.0
        self.last_ping_rtt = 0.0

    @property
    def closing(self) -> bool:
        """Our close is out (or the socket is gone): nothing more is written."""
        state = self.state
        return state is WebSocketState.CLOSING or state is WebSocketState.CLOSED

    # --- asyncio.Protocol -----------------------------------------------------------------
    # No connection_made: the transport exists before this protocol; `adopt` takes it over.

    def adopt(
        self,
        transport: asyncio.Transport,
        server: tuple[str, int | None] | None,
        client: tuple[str, int] | None,
        tls: bool,
    ) -> None:
        """Take over a connection whose HTTP protocol already knows its addresses."""
        self.transport = transport
        self.server = server
        self.client = client
        self.scheme = "wss" if tls else "ws"
        self.connections.add(self)  # type: ignore[arg-type]

    def count_in(self, guard: ConnectionGuard | None, address: str) -> None:
        """Take over the HTTP protocol's place in the guard's count; released on close."""
        self.guard = guard
        self.address = address

    def upgrade(self, http_scope: dict[str, Any], target: bytes) -> None:
        """Answer the upgrade request httptools parsed: fail it, or start the application."""
        headers: list[tuple[bytes, bytes]] = http_scope["headers"]
        raw_path, _, query_string = target.partition(b"?")
        try:
            key, path, subprotocols = check_handshake(http_scope["method"], raw_path, headers)
        except HandshakeError as exc:
            self.state = WebSocketState.CLOSING
            body = f"Failed to open a WebSocket connection: {exc}.\n"
            self.transport.write(plain_response(exc.status, body, exc.headers))
            self.transport.close()
            return
        self._accept = accept_key(key)
        root_path: str = self.config.root_path
        # Not kept on the protocol: the scope holds the protocol (its extension), and a cycle
        # would outlive the connection until the next full collection.
        scope = {
            "type": "websocket",
            "asgi": {"version": self.config.asgi_version, "spec_version": "2.4"},
            "http_version": http_scope.get("http_version", "1.1"),
            "scheme": self.scheme,
            "server": self.server,
            "client": self.client,
            "root_path": root_path,
            "path": root_path + (unquote(path) if "%" in path else path),
            "raw_path": root_path.encode("ascii") + raw_path,
            "query_string": query_string,
            "headers": headers,
            "subprotocols": subprotocols,
            "state": http_scope["state"],
            # This protocol owns the socket: it offers the sink (transport.py).
            "extensions": {EXTENSION: {"transport": self}},
        }
        self._deliver({"type": "websocket.connect"})
        task = self.loop.create_task(self.run_asgi(scope))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_keepalive()
        code = 1006 if self.state is WebSocketState.CONNECTING else 1005
        self._deliver({"type": "websocket.disconnect", "code": code})
        self.connections.discard(self)
        self.state = WebSocketState.CLOSED
        self._fragments = self._buffer = None
        self._wake_writer()
        for timer in (self.close_timer, self._abort_timer):
            if timer is not None:
                timer.cancel()
        self.close_timer = self._abort_timer = None
        guard, self.guard = self.guard, None
        if guard is not None:
            guard.release(self.address)
        if exc is None:
            self.transport.close()

    def eof_received(self) -> None:
        pass

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    def _wake_writer(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def shutdown(self) -> None:
        """uvicorn's server is exiting: close with 1012 (Service drains before this)."""
        self.stop_keepalive()
        if self.closing:
            if self.close_timer is not None:
                self.close_timer.cancel()
                self.close_timer = None
            self.transport.close()
            return
        if self.state is WebSocketState.OPEN:
            self._deliver({"type": "websocket.disconnect", "code": 1012})
            self._write_close(1012)
        else:
            self._send_500()
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport.is_closing():
            # Failed or closed: nothing more the peer sends is processed (RFC 6455 §7.1.7).
            return
        buffer = self._buffer
        received: bytes | bytearray = data
        if buffer is not None:
            buffer += data
            received = buffer
        # Every frame spends a token: data, continuation, ping, pong, close (FRAME_RATE).
        limits = self.limits
        now = time.monotonic()
        tokens = self._frame_tokens + (now - self._frame_stamp) * limits.rate
        if tokens > limits.burst:
            tokens = limits.burst
        self._frame_stamp = now
        position = 0
        size = len(received)
        try:
            while position < size:
                fragments = self._fragments
                room = self.max_size if fragments is None else self.max_size - self._fragment_bytes
                frame = read_frame(received, position, room)
                if frame is None:
                    break
                opcode, fin, payload, position = frame
                tokens -= 1.0
                if tokens < 0.0:
                    self._violation("frame rate exceeded")
                    return
                if opcode <= OP_BINARY:
                    self._on_data(opcode, fin, payload)
                elif opcode == OP_PING:
                    if self.state is WebSocketState.OPEN:
                        self._write_control(encode_frame(OP_PONG, payload))
                elif opcode == OP_PONG:
                    self._on_pong(payload)
                else:
                    self._on_close(payload)
                if transport.is_closing():
                    return
        except FrameError as exc:
            self._fail(exc.code, exc.reason)
            return
        self._frame_tokens = tokens
        if position >= size:
            self._buffer = None
        elif buffer is not None:
            del buffer[:position]
        else:
            self._buffer = bytearray(memoryview(received)[position:])

    def _write_close(self, code: int, reason: str = "") -> None:
        """Our close frame, once: only while open (a second one would break the handshake)."""
        if self.state is WebSocketState.OPEN:
            self.transport.write(encode_frame(OP_CLOSE, close_payload(code, reason)))
            self.state = WebSocketState.CLOSING

    def _write_control(self, data: bytes) -> None:
        """Write a pong or ping, within the connection's outbound bound."""
        sink = self.sink
        if sink is not None:
            queued, limit = sink.queued_bytes, sink.limit
        else:
            queued, limit = self.transport.get_write_buffer_size(), self.limits.outbound_bytes
        if queued + len(data) > limit:
            # A client that sends pings and never reads their pongs is a slow consumer.
            if sink is not None:
                sink.overflow()  # the connection records it and aborts through the sink
            else:
                self.abort(3008, "slow consumer")
            return
        self.transport.write(data)

    def _close_now(self, code: int | None = None, reason: str = "") -> None:
        """Our close frame with `code` (None: none); close without waiting for a reply."""
        if code is not None:
            self._write_close(code, reason)
        self.state = WebSocketState.CLOSING
        self.transport.close()
        # close() waits for the buffer to drain; a peer that never reads would hold it.
        if self._abort_timer is None:
            self._abort_timer = self.loop.call_later(CLOSE_GRACE, self.transport.abort)

    def abort(self, code: int, reason: str) -> None:
        """Close now with `code`: the close frame behind what is buffered, no closing handshake."""
        if self.transport.is_closing():
            return
        self._close_now(code, reason)

    def _violation(self, reason: str) -> None:
        """The client broke a frame bound: close 1008 at once and drop what it sent."""
        self._fragments = None
        self._deliver({"type": "websocket.disconnect", "code": 1008, "reason": reason})
        logger.info("WebSocket closed with 1008: %s (client %s)", reason, self.address or "?")
        self.abort(1008, reason)

    # --- what this protocol offers the application (transport.WebSocketTransport) ----------

    def open_sink(self, max_bytes: int, on_overflow: Callable[[], None]) -> DirectSink:
        """The sink of this connection: frames straight to its transport."""
        from app.realtime.direct_sink import DirectSink  # it imports this module

        self.sink = DirectSink(self, max_bytes, on_overflow)
        return self.sink

    def peers(self) -> int:
        """Other connections of this client's address the process holds (any port)."""
        return self.guard.peers(self.address) if self.guard is not None else 0

    async def close(self, code: int, reason: str) -> None:
        """The closing handshake, after what is buffered (waits while the transport is full)."""
        await self.send({"type": "websocket.close", "code": code, "reason": reason})

    # --- inbound --------------------------------------------------------------------------

    def _on_data(self, opcode: int, fin: bool, payload: bytes) -> None:
        fragments = self._fragments
        if opcode != OP_CONT:
            if fragments is not None:
                raise FrameError(PROTOCOL_ERROR, "expected a continuation frame")
            self._fragment_text = opcode == OP_TEXT
            if fin:
                self._on_message(payload)
                return
            self._fragments = [payload]
            self._fragment_bytes = len(payload)
            return
        if fragments is None:
            raise FrameError(PROTOCOL_ERROR, "unexpected continuation frame")
        if len(fragments) >= self.limits.max_fragments:
            self._violation("too many fragments")
            return
        fragments.append(payload)
        self._fragment_bytes += len(payload)
        if fin:
            self._fragments = None
            self._on_message(b"".join(fragments))

    def _on_message(self, data: bytes) -> None:
        if self.closing:
            # The application is past `websocket.close`: drop it, keep reading for the reply.
            return
        if self._fragment_text:
            try:
                text = data.decode()
            except UnicodeDecodeError:
                self._fail(INVALID_DATA, "invalid UTF-8")
                return
            self._deliver({"type": "websocket.receive", "text": text})
            # Counted as `receive` will subtract it: in characters for text.
            self._inbox_bytes += len(text)
        else:
            self._deliver({"type": "websocket.receive", "bytes": data})
            self._inbox_bytes += len(data)
        waiting = len(self._inbox)  # type: ignore[arg-type]  # _deliver has made it
        if not self.read_paused and (
            waiting >= INBOX_HIGH or self._inbox_bytes >= INBOX_HIGH_BYTES
        ):
            self.read_paused = True
            self.transport.pause_reading()

    def _deliver(self, message: dict[str, Any]) -> None:
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = collections.deque()
        inbox.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_close(self, payload: bytes) -> None:
        if self.closing:
            # The peer answered our close frame: the closing handshake is complete.
            if self.close_timer is not None:
                self.close_timer.cancel()
                self.close_timer = None
                self.transport.close()
            return
        code, reason = parse_close(payload)
        if self._fragments is not None:
            raise FrameError(PROTOCOL_ERROR, "incomplete fragmented message")
        self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason})
        # The echo of the peer's close frame, its payload as it came (RFC 6455 §5.5.1).
        if self.state is WebSocketState.OPEN:
            self.transport.write(encode_frame(OP_CLOSE, payload))
        self._close_now()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 §7.1.7): our close frame, no wait for the reply."""
        self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason})
        self._close_now(code, reason)

    # --- keepalive (as uvicorn's websockets-sansio: WS_PING_INTERVAL / WS_PING_TIMEOUT) -----

    def start_keepalive(self) -> None:
        interval = self.config.ws_ping_interval
        if interval is not None and interval > 0:
            self._schedule_ping()

    def stop_keepalive(self) -> None:
        if self.ping_timer is not None:
            self.ping_timer.cancel()
            self.ping_timer = None
        if self.pong_timer is not None:
            self.pong_timer.cancel()
            self.pong_timer = None
        self.pending_ping_payload = None

    def _schedule_ping(self) -> None:
        interval = self.config.ws_ping_interval or 0.0
        delay = max(0.0, interval - self.last_ping_rtt)
        self.ping_timer = self.loop.call_later(delay, self._send_ping)

    def _send_ping(self) -> None:
        self.ping_timer = None
        if self.closing or self.transport.is_closing():
            return
        self.pending_ping_payload = struct.pack("!I", random.getrandbits(32))
        self.ping_sent_at = self.loop.time()
        self._write_control(encode_frame(OP_PING, self.pending_ping_payload))
        if self.transport.is_closing():
            return
        timeout = self.config.ws_ping_timeout
        if timeout is not None:
            self.pong_timer = self.loop.call_later(timeout, self._keepalive_timeout)
        else:
            self._schedule_ping()

    def _on_pong(self, payload: bytes) -> None:
        # Unsolicited or stale pongs (another payload) are ignored.
        if self.pending_ping_payload is None or payload != self.pending_ping_payload:
            return
        self.last_ping_rtt = self.loop.time() - self.ping_sent_at
        self.pending_ping_payload = None
        if self.pong_timer is not None:
            self.pong_timer.cancel()
            self.pong_timer = None
            self._schedule_ping()

    def _keepalive_timeout(self) -> None:
        self.pong_timer = None
        self.pending_ping_payload = None
        if self.closing or self.transport.is_closing():
            return
        self._close_now(1011, "keepalive ping timeout")

    # --- ASGI -----------------------------------------------------------------------------

    async def run_asgi(self, scope: dict[str, Any]) -> None:
        try:
            result = await self.app(scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            logger.exception("Exception in ASGI application\n")
            self._send_500()
        else:
            if self.state is WebSocketState.CONNECTING:
                logger.error("ASGI callable returned without completing handshake.")
                self._send_500()
            elif result is not None:
                logger.error("ASGI callable should return None, but returned '%s'.", result)
        if self.close_timer is None:
            self.transport.close()

    def _send_500(self) -> None:
        if self.state is not WebSocketState.CONNECTING:
            return
        self.state = WebSocketState.CLOSING
        self.transport.write(plain_response(500, "Internal Server Error"))

    async def receive(self) -> dict[str, Any]:
        while not self._inbox:
            waiter = self._waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        inbox = self._inbox
        message = inbox.popleft()
        if not inbox:
            self._inbox = None  # an idle connection holds no deque
        if message["type"] == "websocket.receive":
            payload = message.get("text")
            if payload is None:
                payload = message["bytes"]
            self._inbox_bytes -= len(payload)
        if self.read_paused and len(inbox) <= INBOX_LOW and self._inbox_bytes <= INBOX_LOW_BYTES:
            self.read_paused = False
            self.transport.resume_reading()
        return message

    async def send(self, message: dict[str, Any]) -> None:
        writable = self._writable
        if writable is not None:
            await asyncio.shield(writable)
        state = self.state
        if state is WebSocketState.CLOSED:
            raise ClientDisconnected()
        kind = message["type"]
        if state is WebSocketState.CONNECTING:
            if kind == "websocket.accept":
                self._accept_handshake(message)
            elif kind == "websocket.close":
                # Before accept a close is an HTTP 403 (ASGI spec).
                self._deliver({"type": "websocket.disconnect", "code": 1006})
                self.state = WebSocketState.CLOSING
                self.transport.write(plain_response(403, ""))
                self.transport.close()
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.accept' or 'websocket.close', "
                    f"but got {kind!r}."
                )
            return
        if state is WebSocketState.CLOSING:
            raise RuntimeError(
                f"Unexpected ASGI message {kind!r}, after sending 'websocket.close'."
            )
        if kind == "websocket.send":
            data = message.get("bytes")
            if data is not None:
                self.transport.write(encode_frame(OP_BINARY, data))
            else:
                self.transport.write(encode_frame(OP_TEXT, message["text"].encode()))
        elif kind == "websocket.close":
            if self.transport.is_closing():
                return
            code = message.get("code", 1000)
            reason = message.get("reason") or ""
            self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason})
            self._write_close(code, reason)
            if self.read_paused:
                self.read_paused = False
                self.transport.resume_reading()
            self.close_timer = self.loop.call_later(CLOSE_TIMEOUT, self.transport.abort)
        else:
            raise RuntimeError(
                f"Expected ASGI message 'websocket.send' or 'websocket.close', but got {kind!r}."
            )

    def _accept_handshake(self, message: dict[str, Any]) -> None:
        if self.transport.is_closing():
            return
        lines = [
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"upgrade: websocket\r\n"
            b"connection: Upgrade\r\n"
            b"sec-websocket-accept: " + self._accept + b"\r\n"
        ]
        for name, value in (*self.default_headers, *message.get("headers", ())):
            lines.append(bytes(name) + b": " + bytes(value) + b"\r\n")
        subprotocol = message.get("subprotocol")
        if subprotocol:
            lines.append(b"sec-websocket-protocol: " + subprotocol.encode() + b"\r\n")
        lines.append(b"\r\n")
        self.state = WebSocketState.OPEN
        self.transport.write(b"".join(lines))
        self.start_keepalive()
