"""Channel → local connections, and the fan-out of a publication to them.

The hub is the broker's handler on this node: `handle_publication` runs once per publication,
takes the frame encoded once, and pushes it into each subscriber's non-blocking sink. It never
awaits a client; a client whose sink overflows closes itself (slow consumer).
"""

from __future__ import annotations

import asyncio

from app.realtime.broker.base import Broker
from app.realtime.connection import Connection
from app.realtime.publication import Publication
from app.realtime.stats import Stats


class BrokerUnavailable(Exception):
    """The broker could not subscribe this node to a channel."""


class Hub:
    def __init__(self, broker: Broker, stats: Stats) -> None:
        self._broker = broker
        self._stats = stats
        # dict as an insertion-ordered set: iteration is fast and deterministic.
        self._channels: dict[str, dict[Connection, None]] = {}
        # Channels whose broker subscription is in flight: later subscribers wait on it.
        self._pending: dict[str, asyncio.Future[bool]] = {}

    def handle_publication(self, publication: Publication) -> None:
        subscribers = self._channels.get(publication.channel)
        if not subscribers:
            return
        frame = publication.frame
        delivered = 0
        # Connection.send never mutates the hub (overflow only schedules a close), so the
        # dict can be iterated without a copy.
        for connection in subscribers:
            if connection.send(frame):
                delivered += 1
        stats = self._stats
        stats.deliveries += delivered
        stats.messages_out["event"] += delivered
        stats.delivery_rate.mark(delivered)

    async def subscribe(self, connection: Connection, channel: str) -> bool:
        """Add a subscription; False when it already existed."""
        subscribers = self._channels.get(channel)
        if subscribers is None:
            subscribers = self._channels[channel] = {}
            ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._pending[channel] = ready
            ok = False
            try:
                await self._broker.subscribe(channel)
                ok = True
            finally:
                del self._pending[channel]
                ready.set_result(ok)
                if not ok and not subscribers and self._channels.get(channel) is subscribers:
                    del self._channels[channel]
        else:
            pending = self._pending.get(channel)
            if pending is not None and not await asyncio.shield(pending):
                raise BrokerUnavailable(channel)
            subscribers = self._channels.setdefault(channel, subscribers)
        if connection in subscribers:
            return False
        subscribers[connection] = None
        connection.subscriptions.add(channel)
        self._stats.subscriptions_total += 1
        return True

    async def unsubscribe(self, connection: Connection, channel: str) -> bool:
        """Remove a subscription; False when there was none."""
        connection.subscriptions.discard(channel)
        subscribers = self._channels.get(channel)
        if subscribers is None or connection not in subscribers:
            return False
        del subscribers[connection]
        if not subscribers and channel not in self._pending:
            del self._channels[channel]
            await self._broker.unsubscribe(channel)
        return True

    async def remove(self, connection: Connection) -> None:
        """Drop every subscription of a closed connection."""
        for channel in list(connection.subscriptions):
            await self.unsubscribe(connection, channel)

    def subscribers(self, channel: str) -> list[Connection]:
        return list(self._channels.get(channel, ()))

    def channel_stats(self) -> dict[str, int]:
        """Channel → number of local subscribers."""
        return {channel: len(subs) for channel, subs in self._channels.items() if subs}
