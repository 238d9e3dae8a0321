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
  with a pre-built `101`, and frames with websockets' sans-I/O `Protocol` (the same frame
  parser and close handshake uvicorn's ``websockets-sansio`` uses). It speaks ASGI to the
  application — `receive` / `send` — so the endpoint runs unchanged on any ASGI server; here
  `receive` reads a deque with one waiter instead of an `asyncio.Queue`, and reading from the
  socket pauses only once `INBOX_HIGH` messages or `INBOX_HIGH_BYTES` wait (uvicorn pauses and
  resumes the socket  around every message).

Every inbound frame — data, continuation, ping, pong, close — spends a token of the
connection's frame bucket (FRAME_RATE / FRAME_BURST) and a message has at most
MAX_MESSAGE_FRAGMENTS fragments; past either the connection is closed at once with 1008. Bytes
are parsed in slices of `FEED_BYTES`, the bucket checked after each, so a read full of tiny
frames is cut off after one slice instead of being parsed whole. The pongs and pings this
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
import contextlib
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
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side

from app.core.admission import ConnectionGuard
from app.core.http_protocol import BoundedHttpProtocol, HeadLimits, plain_response
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

# Inbound bytes are parsed this many at a time, the frame bucket checked after each slice.
FEED_BYTES = 16 * 1024


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
        "conn",
        "limits",
        "guard",
        "address",
        "sink",
        "state",
        "_accept",
        "close_timer",
        "_abort_timer",
        "read_paused",
        "_inbox",
        "_inbox_bytes",
        "_waiter",
        "_writable",
        "_frame_tokens",
        "_frame_stamp",
        "_fragments",
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
        self.conn = Protocol(Side.SERVER, max_size=config.ws_max_size, logger=logger)
        self.limits = limits = limits or FrameLimits()
        self.guard: ConnectionGuard | None = None
        self.address = ""
        self.sink: DirectSink | None = None
        self.state = WebSocketState.CONNECTING
        self._accept = b""
        self.close_timer: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self.read_paused = False
        self._inbox: collections.deque[dict[str, Any]] = collections.deque()
        self._inbox_bytes = 0  # payload bytes (characters of text) waiting in the inbox
        self._waiter: asyncio.Future[None] | None = None
        # Set while the transport's buffer is above its high-water mark (pause_writing).
        self._writable: asyncio.Future[None] | None = None
        # The frame bucket, inline (two floats, no object per connection): full at the first
        # frame, since the stamp is the epoch of the monotonic clock.
        self._frame_tokens = limits.burst
        self._frame_stamp = 0.0
        self._fragments: list[bytes] = []
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
        self._inbox.append({"type": "websocket.connect"})
        task = self.loop.create_task(self.run_asgi(scope))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_keepalive()
        code = 1006 if self.state is WebSocketState.CONNECTING else 1005
        self._deliver({"type": "websocket.disconnect", "code": code})
        self.connections.discard(self)
        self.state = WebSocketState.CLOSED
        self._fragments = []
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
            self.conn.send_close(1012)
            self._write_pending()
            self.state = WebSocketState.CLOSING
        else:
            self._send_500()
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if len(data) <= FEED_BYTES:
            self._receive(data)
            return
        # A large read is parsed a slice at a time: websockets would otherwise parse every
        # frame in it before the frame bucket is looked at (tens of thousands of empty ones).
        view = memoryview(data)
        for start in range(0, len(data), FEED_BYTES):
            if not self._receive(view[start : start + FEED_BYTES]):
                return

    def _receive(self, data: bytes | memoryview) -> bool:
        """Parse and handle `data`; False once the connection is closed for what it sent."""
        conn = self.conn
        conn.receive_data(data)  # type: ignore[arg-type]  # a bytearray appends a memoryview
        if conn.parser_exc is not None:
            self._fail_from_parser()
            return False
        # A server-side Protocol past the handshake only ever yields frames.
        events = cast("list[Frame]", conn.events_received())
        if not events:
            return True
        # Every frame spends a token: data, continuation, ping, pong, close (FRAME_RATE).
        limits = self.limits
        now = time.monotonic()
        tokens = self._frame_tokens + (now - self._frame_stamp) * limits.rate
        if tokens > limits.burst:
            tokens = limits.burst
        tokens -= len(events)
        self._frame_stamp = now
        if tokens < 0.0:
            self._violation("frame rate exceeded")
            return False
        self._frame_tokens = tokens
        transport = self.transport
        for event in events:
            opcode = event.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
                self._on_data(event)
            elif opcode is Opcode.PING:
                # websockets queued the pong already.
                self._write_control()
            elif opcode is Opcode.PONG:
                self._on_pong(event)
            elif opcode is Opcode.CLOSE:
                self._on_close()
            if transport.is_closing():
                return False
        return True

    def _write_pending(self) -> None:
        """Write what websockets' state machine queued (a close frame, an application frame)."""
        self.transport.write(b"".join(self.conn.data_to_send()))

    def _write_control(self) -> None:
        """Write a pong or ping websockets queued, within the connection's outbound bound."""
        data = b"".join(self.conn.data_to_send())
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

    def _close_now(self) -> None:
        """Write the close frame websockets queued; close without waiting for a reply."""
        self._write_pending()
        self.state = WebSocketState.CLOSING
        self.transport.close()
        # close() waits for the buffer to drain; a peer that never reads would hold it.
        if self._abort_timer is None:
            self._abort_timer = self.loop.call_later(CLOSE_GRACE, self.transport.abort)

    def abort(self, code: int, reason: str) -> None:
        """Close now with `code`: the close frame behind what is buffered, no closing handshake."""
        if self.transport.is_closing():
            return
        with contextlib.suppress(Exception):
            self.conn.fail(code, reason)
        self._close_now()

    def _violation(self, reason: str) -> None:
        """The client broke a frame bound: close 1008 at once and drop what it sent."""
        self._fragments = []
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

    def _on_data(self, frame: Frame) -> None:
        if frame.opcode is not Opcode.CONT:
            self._fragment_text = frame.opcode is Opcode.TEXT
            if frame.fin:
                self._on_message(bytes(frame.data))
                return
            self._fragments = [bytes(frame.data)]
            return
        fragments = self._fragments
        if len(fragments) >= self.limits.max_fragments:
            self._violation("too many fragments")
            return
        fragments.append(bytes(frame.data))
        if frame.fin:
            data = b"".join(fragments)
            self._fragments = []
            self._on_message(data)

    def _on_message(self, data: bytes) -> None:
        if self.closing:
            # The application is past `websocket.close`: drop it, keep reading for the reply.
            return
        if self._fragment_text:
            try:
                text = data.decode()
            except UnicodeDecodeError:
                self.conn.fail(1007, "invalid UTF-8")
                self._fail_from_parser()
                return
            self._deliver({"type": "websocket.receive", "text": text})
            # Counted as `receive` will subtract it: in characters for text.
            self._inbox_bytes += len(text)
        else:
            self._deliver({"type": "websocket.receive", "bytes": data})
            self._inbox_bytes += len(data)
        if not self.read_paused and (
            len(self._inbox) >= INBOX_HIGH or self._inbox_bytes >= INBOX_HIGH_BYTES
        ):
            self.read_paused = True
            self.transport.pause_reading()

    def _deliver(self, message: dict[str, Any]) -> None:
        self._inbox.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_close(self) -> None:
        if self.closing:
            # The peer answered our close frame: the closing handshake is complete.
            if self.close_timer is not None:
                self.close_timer.cancel()
                self.close_timer = None
                self.transport.close()
            return
        if not self.transport.is_closing():
            received = self.conn.close_rcvd
            code = received.code if received is not None else 1005
            reason = received.reason if received is not None else ""
            self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason})
            # websockets queued the echo of the close frame.
            self._close_now()

    def _fail_from_parser(self) -> None:
        sent = self.conn.close_sent
        code = sent.code if sent is not None else 1002
        reason = sent.reason if sent is not None else ""
        self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason})
        self._close_now()

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
        self.conn.send_ping(self.pending_ping_payload)
        self._write_control()
        if self.transport.is_closing():
            return
        timeout = self.config.ws_ping_timeout
        if timeout is not None:
            self.pong_timer = self.loop.call_later(timeout, self._keepalive_timeout)
        else:
            self._schedule_ping()

    def _on_pong(self, frame: Frame) -> None:
        # Unsolicited or stale pongs (another payload) are ignored.
        if self.pending_ping_payload is None or bytes(frame.data) != self.pending_ping_payload:
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
        self.conn.fail(1011, "keepalive ping timeout")
        self._close_now()

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
        inbox = self._inbox
        while not inbox:
            waiter = self._waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        message = inbox.popleft()
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
        try:
            if kind == "websocket.send":
                data = message.get("bytes")
                if data is not None:
                    self.conn.send_binary(data)
                else:
                    self.conn.send_text(message["text"].encode())
                self._write_pending()
            elif kind == "websocket.close":
                if self.transport.is_closing():
                    return
                code = message.get("code", 1000)
                reason = message.get("reason") or ""
                self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason})
                self.conn.send_close(code, reason)
                self._write_pending()
                self.state = WebSocketState.CLOSING
                if self.read_paused:
                    self.read_paused = False
                    self.transport.resume_reading()
                self.close_timer = self.loop.call_later(CLOSE_TIMEOUT, self.transport.abort)
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.send' or 'websocket.close', "
                    f"but got {kind!r}."
                )
        except InvalidState:
            raise ClientDisconnected() from None

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
