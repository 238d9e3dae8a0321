"""The broker contract: publish to a channel, and be called back for every publication.

The hub subscribes a node to a channel on the broker once, however many local clients
subscribe; the broker calls `BrokerHandler.handle_publication` once per publication per node.
"""

from __future__ import annotations

from typing import Protocol

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
        """Accept a publication for every node; returns it with offset/epoch set."""

    async def subscribe(self, channel: str) -> None:
        """Start receiving publications on `channel` (called once per channel per node)."""

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving publications on `channel`."""

    @property
    def healthy(self) -> bool:
        """False while the broker cannot deliver (e.g. reconnecting)."""
