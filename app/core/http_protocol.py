"""uvicorn's httptools protocol with a bounded request head, for all three ports.

uvicorn keeps every header line httptools reports and never times out a head: one connection
sending header lines forever grew the process by gigabytes, and twenty thousand half-sent
heads took every file descriptor. `BoundedHttpProtocol` adds what nginx has
(`large_client_header_buffers`, `client_header_timeout`):

* a request head (request line + headers) over MAX_REQUEST_HEAD_BYTES, or with more than
  MAX_REQUEST_HEADERS header lines, is answered ``431 Request Header Fields Too Large`` and
  the connection closed. Bytes are fed to the parser in slices that never take a head past
  the bound, so what the parser holds of a half-received head is bounded by it too;
* a head not complete within REQUEST_HEAD_TIMEOUT of the connection being made (first
  request) or of its first byte (each later request on a kept-alive connection; the idle time
  between requests is uvicorn's keep-alive timeout) is closed, with ``408`` if it had begun;
* every connection is admitted by the process's `ConnectionGuard` (app/core/admission.py):
  per address, and within the descriptor budget. The one connection let in past the
  per-address limit gets ``503`` to its first request.

The WebSocket port's `UpgradeProtocol` (app/realtime/uvicorn_protocol.py) inherits all of it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app.core.admission import Admission, ConnectionGuard

_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def plain_response(status: int, body: str, headers: bytes = b"") -> bytes:
    """A complete `connection: close` response with a text body."""
    payload = body.encode()
    return (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n".encode()
        + b"content-type: text/plain; charset=utf-8\r\n"
        + f"content-length: {len(payload)}\r\n".encode()
        + b"connection: close\r\n"
        + headers
        + b"\r\n"
        + payload
    )


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """MAX_REQUEST_HEAD_BYTES, MAX_REQUEST_HEADERS, REQUEST_HEAD_TIMEOUT."""

    max_bytes: int = 16 * 1024
    max_headers: int = 100
    timeout: float = 10.0


class _TooManyHeaders(Exception):
    """Raised from `on_header`: httptools stops parsing and re-raises it as its cause."""


class BoundedHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a bounded, timed request head and connection admission."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: HeadLimits | None = None,
        guard: ConnectionGuard | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits or HeadLimits()
        self.guard = guard
        self.address = ""
        self.over_limit = False
        self._counted = False  # admitted by the guard: release it when the connection ends
        self._reading_head = True  # the next bytes belong to a request head
        self._head_bytes = 0
        self._header_count = 0
        self._head_timer: asyncio.TimerHandle | None = None

    # --- connection lifecycle -------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.address = self.client[0] if self.client else ""
        guard = self.guard
        if guard is not None:
            verdict = guard.admit(self.address)
            if verdict is Admission.REFUSED:
                # Closed before anything is read: the descriptor is back at once (RST).
                self._reading_head = False
                transport.abort()
                return
            self._counted = True
            self.over_limit = verdict is Admission.OVER_LIMIT
            guard.waiting(self)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._release()
        super().connection_lost(exc)

    def _release(self) -> None:
        """Stop counting this connection (it closed, or another protocol took it over)."""
        if self._counted and self.guard is not None:
            self._counted = False
            self.guard.release(self.address, self)

    def evict(self) -> None:
        """The guard needs this descriptor for a newer connection (it was waiting for a head)."""
        self._cancel_head_timer()
        self._reading_head = False
        if not self.transport.is_closing():
            self.transport.abort()

    # --- the head bound -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        limit = self.limits.max_bytes
        view = memoryview(data)
        while view:
            if self._reading_head:
                room = limit - self._head_bytes
                chunk, view = view[:room], view[room:]
                self._head_bytes += len(chunk)
            else:
                chunk, view = view, view[len(view) :]
            if not self._feed(chunk):
                return
            if self._reading_head and self._head_bytes >= limit:
                self._refuse(431, "Request head too large.\n")
                return

    def _feed(self, chunk: memoryview) -> bool:
        """Parse `chunk`; False when the connection was answered, closed or upgraded."""
        try:
            self.parser.feed_data(chunk)
        except httptools.HttpParserError as exc:
            if self.transport.is_closing():
                return False  # answered already (a callback refused the request)
            if isinstance(exc.__context__, _TooManyHeaders):
                self._refuse(431, "Too many request headers.\n")
            else:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self._cancel_head_timer()
                self.send_400_response(msg)
            return False
        except httptools.HttpParserUpgrade:
            if self.transport.is_closing():
                return False
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return not self.transport.is_closing()

    def handle_websocket_upgrade(self) -> None:
        # uvicorn's own WebSocket protocol takes the transport (the API and dashboard ports,
        # which only refuse WebSockets): it is no longer ours to count.
        self._release()
        super().handle_websocket_upgrade()

    def _refuse(self, status: int, body: str) -> None:
        """Answer `status` and close; nothing more of this connection is read."""
        self._cancel_head_timer()
        self._reading_head = False
        if self.guard is not None:
            self.guard.busy(self)
        if not self.transport.is_closing():
            self.transport.write(plain_response(status, body))
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # The first byte of a request on a kept-alive connection: its head is timed from here.
        self._start_head_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            raise _TooManyHeaders
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self._reading_head = False
        if self.guard is not None:
            self.guard.busy(self)
        upgrade = bool(self.parser.should_upgrade()) and self._should_upgrade()
        if self.over_limit and self._refuses_over_limit(upgrade):
            self._refuse(503, "Too many connections from this address.\n")
            return
        super().on_headers_complete()

    def _refuses_over_limit(self, upgrade: bool) -> bool:
        """Whether this protocol answers the connection past the per-address limit itself."""
        return True

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # Whatever arrives next is the next request's head (pipelined or kept alive).
        self._reading_head = True
        self._head_bytes = 0
        self._header_count = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.guard is not None and self.timeout_keep_alive_task is not None:
            self.guard.waiting(self)  # kept alive, nothing in flight

    # --- the head timer -------------------------------------------------------------------

    def _start_head_timer(self) -> None:
        if self._head_timer is None and self._reading_head:
            self._head_timer = self.loop.call_later(self.limits.timeout, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        timer = self._head_timer
        if timer is not None:
            self._head_timer = None
            timer.cancel()

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A pipelined head behind a response still being written: never cut into that
            # response; its completion arms the keep-alive timer, or this one fires again.
            self._head_timer = self.loop.call_later(self.limits.timeout, self._head_timeout)
            return
        if self._head_bytes:
            self._refuse(408, "Request head not received in time.\n")
        else:
            # Connected and sent nothing (a preconnect, or a slowloris): just close.
            self._reading_head = False
            self.transport.close()
