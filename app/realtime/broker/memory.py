"""The in-process broker of the embedded default: one node, delivery is a function call."""

from __future__ import annotations

from app.realtime.broker.base import BrokerHandler
from app.realtime.publication import Publication


class MemoryBroker:
    def __init__(self, node_id: str) -> None:
        self._node_id = node_id
        self._handler: BrokerHandler | None = None
        self._channels: set[str] = set()
        self._offsets: dict[str, int] = {}

    async def start(self, handler: BrokerHandler) -> None:
        self._handler = handler

    async def close(self) -> None:
        self._handler = None

    async def publish(self, publication: Publication) -> Publication:
        offset = self._offsets.get(publication.channel, 0) + 1
        self._offsets[publication.channel] = offset
        publication.offset = offset
        publication.origin = self._node_id
        handler = self._handler
        if handler is not None and publication.channel in self._channels:
            handler.handle_publication(publication)
        return publication

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    @property
    def healthy(self) -> bool:
        return True
