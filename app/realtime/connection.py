"""One client connection: its identity, its subscriptions and the bounded path its frames take.

Frames leave through one of two sinks, chosen when the connection is accepted:

* `DirectSink` — under the WebSocket port's own protocol (uvicorn_protocol.py, what the service
  runs) or uvicorn's ``websockets-sansio`` without compression. A frame's pre-encoded wire
  bytes are written straight to the asyncio transport, whose write buffer *is* the outbound
  queue; its size is checked against OUTBOUND_QUEUE_BYTES before every write.
  No task, no coroutine, no per-client framing on the fan-out path.
* `QueueSink` — any other ASGI server (or Starlette's TestClient). A bounded deque drained by
  one writer task through the ASGI ``send`` callable.

Either way a client that does not keep up overflows its bound and is closed with
`CloseCode.SLOW_CONSUMER`; nobody else waits for it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from app.core.security import Role
from app.realtime.frames import Frame
from app.realtime.limits import TokenBucket
from app.realtime.protocol import CloseCode
from app.realtime.uvicorn_protocol import WebSocketProtocol

logger = logging.getLogger("context_manager.connection")

AsgiSend = Callable[[dict[str, Any]], Awaitable[None]]

# Frames of one iteration are written together up to this many bytes, then at once.
FLUSH_BYTES = 64 * 1024

# How long a closing connection may take to flush before its transport is aborted.
CLOSE_GRACE_SECONDS = 2.0


class Sink(Protocol):
    """Where a connection's frames go. `push` never blocks."""

    def push(self, frame: Frame) -> bool:
        """Queue a frame; False when the connection is closing or just overflowed."""

    @property
    def queued_bytes(self) -> int: ...

    async def close(self, code: int, reason: str, timeout: float) -> None:
        """Flush what is queued, then send a close frame (abort after `timeout`)."""

    def abort(self, code: int, reason: str) -> None:
        """Drop what is queued and close now."""


class _Flusher:
    """Writes each connection's frames of one loop iteration with one `transport.write`.

    A publisher's event and ack, or a burst of publications handled in the same iteration,
    then cost one system call per client instead of one per frame. One flusher per loop.
    """

    __slots__ = ("_loop", "_dirty", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[DirectSink] = []
        self._scheduled = False

    def add(self, sink: DirectSink) -> None:
        self._dirty.append(sink)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for sink in dirty:
            sink.flush()


_flushers: dict[asyncio.AbstractEventLoop, _Flusher] = {}


def _flusher() -> _Flusher:
    loop = asyncio.get_running_loop()
    flusher = _flushers.get(loop)
    if flusher is None:
        # Loops end with their tests or their process; drop flushers of closed ones.
        for old in [lp for lp in _flushers if lp.is_closed()]:
            del _flushers[old]
        flusher = _flushers[loop] = _Flusher(loop)
    return flusher


class DirectSink:
    """Writes wire frames to the WebSocket protocol's transport (see module docstring)."""

    __slots__ = (
        "_proto",
        "_transport",
        "_limit",
        "_on_overflow",
        "_flusher",
        "_pending",
        "_pending_bytes",
        "closing",
    )

    def __init__(self, proto: Any, limit_bytes: int, on_overflow: Callable[[], None]) -> None:
        self._proto = proto
        self._transport: asyncio.Transport = proto.transport
        self._limit = limit_bytes
        self._on_overflow = on_overflow
        self._flusher = _flusher()
        # The handshake is over: uvicorn would keep its request and response (every header)
        # for the life of the connection, and nothing reads them again. Idle memory.
        for name in ("request", "response"):
            if hasattr(proto, name):
                setattr(proto, name, None)
        # Frames of the current loop iteration, written together by the flusher.
        self._pending: list[bytes] | None = None
        self._pending_bytes = 0
        self.closing = False

    @staticmethod
    def supports(send: AsgiSend) -> Any | None:
        """The uvicorn protocol behind `send`, when it is one we can write to directly."""
        proto = getattr(send, "__self__", None)
        if isinstance(proto, WebSocketProtocol):
            return proto  # never negotiates compression
        if not isinstance(proto, WebSocketsSansIOProtocol):
            return None
        if getattr(proto.config, "ws_per_message_deflate", True):
            return None  # compressed connections need per-client framing
        return proto

    @property
    def queued_bytes(self) -> int:
        return self._transport.get_write_buffer_size() + self._pending_bytes

    def push(self, frame: Frame) -> bool:
        if self.closing:
            return False
        transport = self._transport
        if transport.is_closing() or self._proto.close_sent:
            self.closing = True
            return False
        wire = frame.wire
        size = len(wire)
        pending_bytes = self._pending_bytes + size
        if transport.get_write_buffer_size() + pending_bytes > self._limit:
            self._on_overflow()
            return False
        pending = self._pending
        if pending is None:
            self._pending = [wire]
            self._flusher.add(self)
        else:
            pending.append(wire)
        self._pending_bytes = pending_bytes
        if pending_bytes >= FLUSH_BYTES:
            # A long burst in one iteration: hand it to the kernel now rather than let it
            # pile up in user space (where it would count against the limit).
            self.flush()
        return True

    def flush(self) -> None:
        """Write what this iteration queued (called by the flusher, and before a close)."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        self._pending_bytes = 0
        transport = self._transport
        if transport.is_closing() or self._proto.close_sent:
            return
        transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    async def close(self, code: int, reason: str, timeout: float) -> None:
        if self.closing:
            return
        self.flush()
        self.closing = True
        # uvicorn's send waits until the transport drained below its high-water mark, so the
        # close frame goes out after everything queued before it.
        try:
            await asyncio.wait_for(
                self._proto.send({"type": "websocket.close", "code": code, "reason": reason}),
                timeout,
            )
        except (TimeoutError, Exception):  # noqa: BLE001 - any failure here means: abort
            self.abort(code, reason)

    def abort(self, code: int, reason: str) -> None:
        self.closing = True
        self._pending = None
        self._pending_bytes = 0
        proto = self._proto
        transport = self._transport
        if transport.is_closing():
            return
        # What uvicorn itself does on a keepalive timeout: fail the protocol, write the close
        # frame behind what is buffered, close; then abort if the peer never drains it.
        with contextlib.suppress(Exception):
            proto.conn.fail(code, reason)
            transport.write(b"".join(proto.conn.data_to_send()))
        proto.close_sent = True
        transport.close()
        asyncio.get_running_loop().call_later(CLOSE_GRACE_SECONDS, transport.abort)


class QueueSink:
    """A bounded deque drained by one writer task through ASGI `send`."""

    __slots__ = (
        "_send",
        "_queue",
        "_bytes",
        "_max_messages",
        "_max_bytes",
        "_on_overflow",
        "_wakeup",
        "_task",
        "_close",
        "closing",
    )

    def __init__(
        self, send: AsgiSend, max_messages: int, max_bytes: int, on_overflow: Callable[[], None]
    ) -> None:
        self._send = send
        self._queue: collections.deque[Frame] = collections.deque()
        self._bytes = 0
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._on_overflow = on_overflow
        self._wakeup: asyncio.Future[None] | None = None
        self._close: tuple[int, str] | None = None
        self.closing = False
        self._task = asyncio.get_running_loop().create_task(self._writer())

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def push(self, frame: Frame) -> bool:
        if self.closing:
            return False
        size = len(frame)
        if len(self._queue) >= self._max_messages or self._bytes + size > self._max_bytes:
            self._on_overflow()
            return False
        self._queue.append(frame)
        self._bytes += size
        self._wake()
        return True

    def _wake(self) -> None:
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _writer(self) -> None:
        queue = self._queue
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not queue:
                    if self._close is not None:
                        code, reason = self._close
                        await self._send(
                            {"type": "websocket.close", "code": code, "reason": reason}
                        )
                        return
                    self._wakeup = loop.create_future()
                    await self._wakeup
                    continue
                frame = queue.popleft()
                self._bytes -= len(frame)
                await self._send({"type": "websocket.send", "text": frame.text})
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the peer went away mid-send; the reader cleans up
            logger.debug("writer stopped", exc_info=True)

    async def close(self, code: int, reason: str, timeout: float) -> None:
        if self.closing:
            return
        self.closing = True
        self._close = (code, reason)
        self._wake()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self.abort(code, reason)

    def abort(self, code: int, reason: str) -> None:
        self.closing = True
        self._queue.clear()
        self._bytes = 0
        self._task.cancel()
        # Still tell the peer, or it would wait forever on a connection nobody writes to.
        # A task, because abort runs inside fan-out and must not block.
        self._task = asyncio.get_running_loop().create_task(self._send_close(code, reason))

    async def _send_close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class Connection:
    """A connected client as the rest of the service sees it."""

    __slots__ = (
        "client_id",
        "agent_id",
        "session_id",
        "remote",
        "subscriptions",
        "connected_at",
        "last_seen",
        "sink",
        "close_code",
        "slow",
        "role",
        "authenticated",
        "expires_at",
        "publish_bucket",
        "message_bucket",
        "__weakref__",
    )

    def __init__(
        self,
        client_id: str,
        *,
        agent_id: str | None,
        session_id: str | None,
        remote: str,
        role: Role | None = None,
        authenticated: bool = True,
        expires_at: float | None = None,
    ) -> None:
        self.client_id = client_id
        self.agent_id = agent_id
        self.session_id = session_id
        self.remote = remote
        # Open mode: an agent when it names one, else an observer (the dashboard's role).
        self.role = role or (Role.AGENT if agent_id else Role.DASHBOARD)
        self.authenticated = authenticated
        self.expires_at = expires_at  # Unix time the token expires (token mode)
        self.publish_bucket: TokenBucket | None = None
        self.message_bucket: TokenBucket | None = None
        self.subscriptions: set[str] = set()
        self.connected_at = time.time()
        self.last_seen = time.monotonic()
        self.sink: Sink | None = None
        self.close_code: int | None = None
        self.slow = False

    def attach(self, send: AsgiSend, max_messages: int, max_bytes: int) -> None:
        """Choose the sink for an accepted connection (see module docstring)."""
        proto = DirectSink.supports(send)
        if proto is not None:
            self.sink = DirectSink(proto, max_bytes, self._overflow)
        else:
            self.sink = QueueSink(send, max_messages, max_bytes, self._overflow)

    def send(self, frame: Frame) -> bool:
        """Queue a frame for this client without waiting; False if it was not queued."""
        sink = self.sink
        return sink is not None and sink.push(frame)

    def _overflow(self) -> None:
        if self.slow:
            return
        self.slow = True
        self.close_code = CloseCode.SLOW_CONSUMER
        logger.warning(
            "slow consumer disconnected",
            extra={"client_id": self.client_id, "agent_id": self.agent_id},
        )
        assert self.sink is not None
        self.sink.abort(CloseCode.SLOW_CONSUMER, "slow consumer")

    async def close(self, code: int, reason: str = "", timeout: float = 5.0) -> None:
        """Flush, then close with `code`."""
        if self.close_code is None:
            self.close_code = code
        if self.sink is not None:
            await self.sink.close(code, reason, timeout)

    def __repr__(self) -> str:
        return f"<Connection {self.client_id} agent={self.agent_id!r}>"
