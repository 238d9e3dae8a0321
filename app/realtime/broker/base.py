"""The broker contract: publish to a channel, keep its history, call back for publications.

The hub subscribes a node to a channel on the broker once, however many local clients
subscribe; the broker calls `BrokerHandler.handle_publication` once per publication per node.
A broker also owns each channel's stream position (offset + epoch) and retained history, so
that offsets are assigned in one place for the whole cluster (see history.py).
"""

from __future__ import annotations

from typing import Protocol

from app.realtime.history import HistoryPage, StreamPosition
from app.realtime.publication import Publication


class BrokerHandler(Protocol):
    def handle_publication(self, publication: Publication) -> None:
        """Deliver a publication to this node's subscribers. Must not block."""


class Broker(Protocol):
    async def start(self, handler: BrokerHandler) -> None:
        """Connect and begin calling `handler` for publications on subscribed channels."""

    async def close(self) -> None:
        """Disconnect; no callbacks after this returns."""

    async def publish(self, publication: Publication) -> Publication:
        """Assign offset and epoch, append to history, deliver to every node; return it."""

    async def subscribe(self, channel: str) -> None:
        """Start receiving publications on `channel` (called once per channel per node)."""

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving publications on `channel`."""

    async def history(
        self, channel: str, since: StreamPosition | None = None, limit: int | None = None
    ) -> HistoryPage:
        """Retained publications after `since` (all retained when None), oldest first."""

    async def position(self, channel: str) -> StreamPosition:
        """The stream's current top offset and epoch."""

    @property
    def healthy(self) -> bool:
        """False while the broker cannot deliver (e.g. reconnecting)."""
