"""One client connection: its identity, its state, its subscriptions and its bounded sink.

Frames leave through one of two sinks, chosen when the connection is accepted (`attach`):

* the sink the server offers in the ASGI scope (transport.py) — under the service's own
  WebSocket protocol, `direct_sink.DirectSink`: pre-encoded wire bytes written straight to the
  socket, whose write buffer is the outbound queue, checked against OUTBOUND_QUEUE_BYTES before
  every write. No task, no coroutine, no per-client framing on the fan-out path.
* `QueueSink` — any other ASGI server (plain uvicorn, Starlette's TestClient): a bounded
  deque drained by one writer task through the ASGI ``send`` callable.

Either way a client that does not keep up overflows its bound and is closed with
`CloseCode.SLOW_CONSUMER`; nobody else waits for it. This module knows sinks only through the
`Sink` protocol.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from app.core.security import Role
from app.realtime.frames import Frame
from app.realtime.limits import TokenBucket
from app.realtime.protocol import CloseCode
from app.realtime.transport import Sink, take_transport

__all__ = ["AsgiSend", "Connection", "ConnectionState", "QueueSink", "Sink"]

logger = logging.getLogger("context_manager.connection")

AsgiSend = Callable[[dict[str, Any]], Awaitable[None]]


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
        "_closing",
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
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._writer())

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def push(self, frame: Frame) -> bool:
        if self._closing:
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
        if self._closing:
            return
        self._closing = True
        self._close = (code, reason)
        self._wake()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._task)
        except TimeoutError:
            self.abort(code, reason)

    def abort(self, code: int, reason: str) -> None:
        self._closing = True
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


class ConnectionState(enum.Enum):
    """A connection's life as the service sees it; `close_code` says why it ended."""

    AUTHENTICATING = "authenticating"  # token mode, no valid token yet: only auth and ping
    OPEN = "open"
    CLOSING = "closing"  # a close was decided (close_code set): flushing, then the close frame
    CLOSED = "closed"  # the endpoint is done with it


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
        "state",
        "close_code",
        "role",
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
        self.state = ConnectionState.OPEN if authenticated else ConnectionState.AUTHENTICATING
        self.expires_at = expires_at  # Unix time the token expires (token mode)
        self.publish_bucket: TokenBucket | None = None
        self.message_bucket: TokenBucket | None = None
        self.subscriptions: set[str] = set()
        self.connected_at = time.time()
        self.last_seen = time.monotonic()
        self.sink: Sink | None = None
        self.close_code: int | None = None

    @property
    def authenticated(self) -> bool:
        """Past AUTHENTICATING: it may do more than `auth` and `ping`."""
        return self.state is not ConnectionState.AUTHENTICATING

    @authenticated.setter
    def authenticated(self, value: bool) -> None:
        # AUTHENTICATING ⇄ OPEN only; a connection already closing stays closing.
        if value and self.state is ConnectionState.AUTHENTICATING:
            self.state = ConnectionState.OPEN
        elif not value and self.state is ConnectionState.OPEN:
            self.state = ConnectionState.AUTHENTICATING

    @property
    def slow(self) -> bool:
        """Closed because it did not read what it was sent (3008)."""
        return self.close_code == CloseCode.SLOW_CONSUMER

    def attach(
        self, scope: MutableMapping[str, Any], send: AsgiSend, max_messages: int, max_bytes: int
    ) -> None:
        """Choose the sink for an accepted connection (see module docstring).

        The server's offer is taken out of the scope: the scope lives as long as the
        connection (the endpoint drops its headers for the same reason).
        """
        transport = take_transport(scope)
        if transport is not None:
            self.sink = transport.open_sink(max_bytes, self._overflow)
        else:
            self.sink = QueueSink(send, max_messages, max_bytes, self._overflow)

    def send(self, frame: Frame) -> bool:
        """Queue a frame for this client without waiting; False if it was not queued."""
        sink = self.sink
        return sink is not None and sink.push(frame)

    def _overflow(self) -> None:
        if self.slow:
            return
        self.close_code = CloseCode.SLOW_CONSUMER
        if self.state is not ConnectionState.CLOSED:
            self.state = ConnectionState.CLOSING
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
        if self.state is not ConnectionState.CLOSED:
            self.state = ConnectionState.CLOSING
        if self.sink is not None:
            await self.sink.close(code, reason, timeout)

    async def detach(self) -> None:
        """The endpoint is done with this connection: CLOSED, and the sink released."""
        self.state = ConnectionState.CLOSED
        if self.sink is not None:
            await self.sink.stop()

    def __repr__(self) -> str:
        return f"<Connection {self.client_id} {self.state.value} agent={self.agent_id!r}>"
