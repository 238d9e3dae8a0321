"""Channel → local connections, and the fan-out of a publication to them.

The hub is the broker's handler on this node: `handle_publication` runs once per publication,
takes the frame encoded once, and pushes it into each subscriber's non-blocking sink. It never
awaits a client; a client whose sink overflows closes itself (slow consumer).

Subscribing is "live first, then history": the connection's publications are buffered from the
moment it asks, the stream position (and, with `since`, the missed publications) is read from
the broker, and then — in one step with no await — the ack, the replay, the buffered
publications not already replayed, and the switch to live delivery happen. Nothing published
meanwhile is lost or sent twice, whatever the broker's latency.

When the broker knows this node missed publications it can no longer deliver (a StreamReset:
Redis lost its data, or the history was trimmed past the node's position), `handle_reset` sends
every subscriber of the channel one `unrecovered` frame, in order with the publications — the
next ones it gets follow the reset's position. A subscribe in flight buffers it like one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from app.realtime.broker.base import Broker, StreamReset
from app.realtime.connection import Connection
from app.realtime.history import StreamPosition
from app.realtime.publication import Publication
from app.realtime.stats import Stats

Tap = Callable[[Publication], None]


class BrokerUnavailable(Exception):
    """The broker could not subscribe this node to a channel."""


@dataclass(slots=True)
class Subscribed:
    """The outcome of a subscribe, handed to the caller before any replayed event is sent."""

    position: StreamPosition
    # None without `since`; else whether every missed publication is replayed.
    recovered: bool | None
    replayed: int


class Hub:
    def __init__(self, broker: Broker, stats: Stats) -> None:
        self._broker = broker
        self._stats = stats
        # dict as an insertion-ordered set: iteration is fast and deterministic.
        self._channels: dict[str, dict[Connection, None]] = {}
        # Connections between "subscribe asked" and "live": their publications wait here.
        self._buffers: dict[str, dict[Connection, list[Publication | StreamReset]]] = {}
        # Channels whose broker subscription is in flight: later subscribers wait on it.
        self._pending: dict[str, asyncio.Future[bool]] = {}
        # In-process listeners (waits.py: an agent's long poll), called with each publication.
        self._taps: dict[str, list[Tap]] = {}

    def handle_publication(self, publication: Publication) -> None:
        channel = publication.channel
        taps = self._taps.get(channel)
        if taps:
            for tap in taps:
                tap(publication)
        buffers = self._buffers.get(channel)
        if buffers:
            for pending in buffers.values():
                pending.append(publication)
        subscribers = self._channels.get(channel)
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

    def handle_reset(self, reset: StreamReset) -> None:
        """Tell the channel's subscribers that publications up to `reset.position` may be lost."""
        channel = reset.channel
        buffers = self._buffers.get(channel)
        if buffers:
            for pending in buffers.values():
                pending.append(reset)
        subscribers = self._channels.get(channel)
        if not subscribers:
            return
        frame = reset.frame
        sent = 0
        for connection in subscribers:
            if connection.send(frame):
                sent += 1
        self._stats.messages_out["unrecovered"] += sent

    async def _ensure_broker_subscription(self, channel: str) -> dict[Connection, None]:
        subscribers = self._channels.get(channel)
        if subscribers is not None:
            pending = self._pending.get(channel)
            if pending is not None and not await asyncio.shield(pending):
                raise BrokerUnavailable(channel)
            return self._channels.setdefault(channel, subscribers)
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
        return subscribers

    async def subscribe(
        self,
        connection: Connection,
        channel: str,
        since: StreamPosition | None = None,
        on_subscribed: Callable[[Subscribed], None] | None = None,
    ) -> Subscribed:
        """Subscribe `connection`, replaying from `since` when the history covers it.

        `on_subscribed` runs right before the replay, so the ack precedes replayed events.
        """
        subscribers = await self._ensure_broker_subscription(channel)
        if connection in subscribers:
            # Already live: nothing can have been missed, so there is nothing to replay.
            outcome = Subscribed(await self._broker.position(channel), None, 0)
            if on_subscribed is not None:
                on_subscribed(outcome)
            return outcome
        buffers = self._buffers.setdefault(channel, {})
        buffer: list[Publication | StreamReset] = []
        buffers[connection] = buffer
        try:
            if since is None:
                position = await self._broker.position(channel)
                replay: list[Publication] = []
                recovered: bool | None = None
            else:
                page = await self._broker.history(channel, since)
                position, replay, recovered = page.position, page.publications, page.recoverable
        except BaseException:
            self._drop_buffer(channel, connection)
            await self._release(channel)
            raise
        # From here to the end: no await, so no publication can slip between the parts.
        self._drop_buffer(channel, connection)
        outcome = Subscribed(position, recovered, len(replay))
        if on_subscribed is not None:
            on_subscribed(outcome)
        last = since.offset if since is not None and recovered else 0
        epoch = position.epoch
        for publication in replay:
            connection.send(publication.frame)
            last = publication.offset
        sent = len(replay)
        for item in buffer:
            # A reset at or below the position read, in its epoch, came before that read:
            # the ack already told the client where it stands (recovered: false with `since`).
            at = item.position if isinstance(item, StreamReset) else item
            if at.epoch != epoch or at.offset > last:
                connection.send(item.frame)
                last, epoch = at.offset, at.epoch
                if isinstance(item, StreamReset):
                    self._stats.messages_out["unrecovered"] += 1
                else:
                    sent += 1
        if sent:
            self._stats.messages_out["event"] += sent
        if connection not in subscribers:
            subscribers[connection] = None
            connection.subscriptions.add(channel)
            self._stats.subscriptions_total += 1
        return outcome

    def _drop_buffer(self, channel: str, connection: Connection) -> None:
        buffers = self._buffers.get(channel)
        if buffers is not None:
            buffers.pop(connection, None)
            if not buffers:
                del self._buffers[channel]

    async def unsubscribe(self, connection: Connection, channel: str) -> bool:
        """Remove a subscription; False when there was none."""
        connection.subscriptions.discard(channel)
        subscribers = self._channels.get(channel)
        if subscribers is None or connection not in subscribers:
            return False
        del subscribers[connection]
        await self._release(channel)
        return True

    async def remove(self, connection: Connection) -> None:
        """Drop every subscription of a closed connection."""
        for channel in list(connection.subscriptions):
            await self.unsubscribe(connection, channel)

    async def tap(self, channel: str, tap: Tap) -> None:
        """Call `tap` (it must not block) with every publication on `channel` from now on."""
        taps = self._taps.get(channel)
        if taps is None:
            taps = self._taps[channel] = []
            try:
                await self._ensure_broker_subscription(channel)
            except BaseException:
                self._taps.pop(channel, None)
                raise
        taps.append(tap)

    async def untap(self, channel: str, tap: Tap) -> None:
        taps = self._taps.get(channel)
        if taps is None or tap not in taps:
            return
        taps.remove(tap)
        if not taps:
            del self._taps[channel]
            await self._release(channel)

    async def _release(self, channel: str) -> None:
        """Unsubscribe the node from `channel` once nobody here listens to it."""
        subscribers = self._channels.get(channel)
        if (
            subscribers is not None
            and not subscribers
            and channel not in self._pending
            and channel not in self._buffers
            and channel not in self._taps
        ):
            del self._channels[channel]
            await self._broker.unsubscribe(channel)

    def subscribers(self, channel: str) -> list[Connection]:
        return list(self._channels.get(channel, ()))

    def channel_stats(self) -> dict[str, int]:
        """Channel → number of local subscribers."""
        return {channel: len(subs) for channel, subs in self._channels.items() if subs}
