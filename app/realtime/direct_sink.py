"""The WebSocket port's sink: pre-encoded frames written straight to the protocol's transport.

`uvicorn_protocol.WebSocketProtocol.open_sink` makes one per accepted connection (it owns the
transport; see transport.py). The transport's write buffer *is* the outbound queue: its size
plus this iteration's pending frames is checked against OUTBOUND_QUEUE_BYTES before every
frame, and the protocol checks the same sum before it writes a pong or a ping. No task, no
coroutine, no per-client framing on the fan-out path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from app.realtime.frames import Frame
from app.realtime.uvicorn_protocol import WebSocketState

if TYPE_CHECKING:
    from app.realtime.uvicorn_protocol import WebSocketProtocol

# A module global and an identity test: the cheapest state check on the fan-out path.
_OPEN = WebSocketState.OPEN

# Frames of one iteration are written together up to this many bytes, then at once.
FLUSH_BYTES = 64 * 1024


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


def _flusher(loop: asyncio.AbstractEventLoop) -> _Flusher:
    flusher = _flushers.get(loop)
    if flusher is None:
        # Loops end with their tests or their process; drop flushers of closed ones.
        for old in [lp for lp in _flushers if lp.is_closed()]:
            del _flushers[old]
        flusher = _flushers[loop] = _Flusher(loop)
    return flusher


class DirectSink:
    """Writes wire frames to a `WebSocketProtocol`'s transport (see module docstring)."""

    __slots__ = (
        "_proto",
        "_transport",
        "limit",
        "_on_overflow",
        "_flusher",
        "_pending",
        "_pending_bytes",
        "_closing",
    )

    def __init__(
        self, proto: WebSocketProtocol, limit_bytes: int, on_overflow: Callable[[], None]
    ) -> None:
        self._proto = proto
        self._transport = proto.transport
        self.limit = limit_bytes
        self._on_overflow = on_overflow
        self._flusher = _flusher(proto.loop)
        # Frames of the current loop iteration, written together by the flusher.
        self._pending: list[bytes] | None = None
        self._pending_bytes = 0
        self._closing = False  # close or abort called: nothing more is queued

    @property
    def queued_bytes(self) -> int:
        return self._transport.get_write_buffer_size() + self._pending_bytes

    def push(self, frame: Frame) -> bool:
        if self._closing:
            return False
        if self._proto.state is not _OPEN or self._transport.is_closing():
            self._closing = True
            return False
        wire = frame.wire
        pending_bytes = self._pending_bytes + len(wire)
        if self._transport.get_write_buffer_size() + pending_bytes > self.limit:
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

    def overflow(self) -> None:
        """The protocol's own frame (a pong) would pass the bound: the client is slow."""
        self._on_overflow()

    def flush(self) -> None:
        """Write what this iteration queued (called by the flusher, and before a close)."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        self._pending_bytes = 0
        if self._proto.state is not _OPEN or self._transport.is_closing():
            return
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    async def close(self, code: int, reason: str, timeout: float) -> None:
        if self._closing:
            return
        self.flush()
        self._closing = True
        # The protocol's close waits until the transport drained below its high-water mark,
        # so the close frame goes out after everything queued before it.
        try:
            async with asyncio.timeout(timeout):
                await self._proto.close(code, reason)
        except (TimeoutError, Exception):  # noqa: BLE001 - any failure here means: abort
            self.abort(code, reason)

    def abort(self, code: int, reason: str) -> None:
        self._closing = True
        self._pending = None
        self._pending_bytes = 0
        self._proto.abort(code, reason)

    async def stop(self) -> None:
        self._closing = True
        self._pending = None
        self._pending_bytes = 0
