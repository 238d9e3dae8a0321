"""The seam between a WebSocket connection's transport and the application: `Sink`, offered.

A server's WebSocket protocol owns the socket, so it is the one to offer a way to write to it.
The service's own protocol (uvicorn_protocol.py) puts itself in the ASGI scope as the
``context_manager.transport`` extension (ASGI: ``scope["extensions"][name]`` is a dict, its
presence says the server supports it), implementing `WebSocketTransport`:

* `open_sink(max_bytes, on_overflow)` — a `Sink` writing pre-encoded frames straight to the
  socket (`direct_sink.DirectSink`);
* `peers()` — the other connections of the client's address the process holds, upgraded or
  not, for the per-address admission.

Any other ASGI server offers nothing; `connection.Connection.attach` then falls back to a
`QueueSink` over ASGI ``send``. Nothing here knows a server's concrete types.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Protocol, runtime_checkable

from app.realtime.frames import Frame

EXTENSION = "context_manager.transport"


class Sink(Protocol):
    """Where a connection's frames go. `push` never blocks."""

    def push(self, frame: Frame) -> bool:
        """Queue a frame; False when the connection is closing or just overflowed."""
        ...

    @property
    def queued_bytes(self) -> int:
        """Bytes queued and not yet taken by the kernel."""
        ...

    async def close(self, code: int, reason: str, timeout: float) -> None:
        """Flush what is queued, then send a close frame (abort after `timeout`)."""
        ...

    def abort(self, code: int, reason: str) -> None:
        """Drop what is queued and close now."""
        ...

    async def stop(self) -> None:
        """The connection is over: release whatever the sink still holds (a writer task)."""
        ...


@runtime_checkable
class WebSocketTransport(Protocol):
    """What a server's WebSocket protocol offers the application for one connection."""

    def open_sink(self, max_bytes: int, on_overflow: Callable[[], None]) -> Sink:
        """A sink writing to this connection's socket, bounded by `max_bytes` queued."""
        ...

    def peers(self) -> int:
        """Other open connections of this client's address (any port, upgraded or not)."""
        ...


def offered_transport(scope: Mapping[str, Any]) -> WebSocketTransport | None:
    """The transport the server offers in `scope`, or None (any other ASGI server)."""
    extension = (scope.get("extensions") or {}).get(EXTENSION)
    if not extension:
        return None
    transport = extension.get("transport")
    return transport if isinstance(transport, WebSocketTransport) else None


def take_transport(scope: MutableMapping[str, Any]) -> WebSocketTransport | None:
    """`offered_transport`, taken out of the scope (which lives as long as the connection)."""
    transport = offered_transport(scope)
    if transport is not None:
        extensions = scope["extensions"]
        del extensions[EXTENSION]
        if not extensions:
            del scope["extensions"]
    return transport


def address_peers(scope: Mapping[str, Any]) -> int:
    """`WebSocketTransport.peers` of the scope's transport; 0 when the server offers none."""
    transport = offered_transport(scope)
    return transport.peers() if transport is not None else 0
