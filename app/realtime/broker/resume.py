"""Exactly once per node across broker reconnects: the last position delivered per channel.

A multi-node broker's subscription can break (Redis restarted, the LISTEN connection dropped).
Publications made while this node was not listening never reach it through pub/sub; the ones
still in the channel's retained history can be won back. `DeliveryTracker` remembers, per
subscribed channel, the last (epoch, offset) handed to the hub — from the moment the node
subscribed, so that a channel quiet until the break is caught up too — and after a reconnect

1. the broker reads each channel's history since that position and delivers what is missing,
   in order (`catch_up`), while live messages wait in a backlog;
2. when the history no longer covers that position — the stream restarted under a new epoch
   (Redis lost its data), or was trimmed past it — the hub is told first (`StreamReset`: the
   subscribers may have lost publications up to a position), then gets every publication the
   history still holds after that position: all of a new epoch's, from its offset 1;
3. live messages already delivered by the catch-up are dropped (`admit`).

A live publication that does not follow the last delivered one (an offset skipped, or a new
epoch not starting at 1) cannot happen while the link is up, but if it does the hub is told as
well: a gap is never silent.

Nothing here runs per subscriber: one dict lookup, two comparisons and one tuple per
publication per node.

`Reconnector` keeps a link up (connect, make ready, watch, back off with full jitter when it
breaks): both multi-node brokers' pub/sub links (`PubSubLink`: subscribe, then catch up after a
reconnect) and the bridge's LISTEN connection.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, Protocol, TypeVar

from app.realtime.broker.base import BrokerHandler, LinkState, StreamReset
from app.realtime.history import HistoryPage, StreamPosition
from app.realtime.protocol import ResetReason
from app.realtime.publication import Publication

logger = logging.getLogger("context_manager.broker")

HistoryReader = Callable[[str, StreamPosition | None], Awaitable[HistoryPage]]

# Channels read concurrently during a catch-up: enough to be quick, few enough for the pool.
CATCH_UP_CONCURRENCY = 32

# Reconnect delays: uniform in [0, min(CAP, BASE * 2**attempt)] seconds ("full jitter"), so
# nodes that lost the server together do not come back in lockstep.
BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0

L = TypeVar("L")


class DeliveryTracker:
    """Per-channel last delivered position, duplicate filter and post-reconnect catch-up."""

    __slots__ = ("_last", "_handler", "_backlog", "_holding", "resets")

    def __init__(self) -> None:
        self._last: dict[str, tuple[str, int]] = {}
        self._handler: BrokerHandler | None = None
        self._backlog: list[Publication] = []
        self._holding = False
        self.resets = 0  # StreamResets sent to the hub (a count for /metrics and tests)

    def bind(self, handler: BrokerHandler | None) -> None:
        self._handler = handler

    def start_at(self, channel: str, position: StreamPosition) -> None:
        """The node subscribed to `channel` when its stream stood at `position`.

        Read after the subscription took effect, so every local subscriber's own starting
        point is at or after it; a catch-up then starts there even if nothing was delivered.
        """
        self._last.setdefault(channel, (position.epoch, position.offset))

    def forget(self, channel: str) -> None:
        """The node stopped listening to `channel`: nothing to catch up there."""
        self._last.pop(channel, None)

    def deliver(self, publication: Publication) -> None:
        """A live publication from the broker: to the hub once, in order (or held back)."""
        if self._holding:
            self._backlog.append(publication)
            return
        self._admit(publication)

    def _admit(self, publication: Publication) -> None:
        channel = publication.channel
        last = self._last.get(channel)
        epoch = publication.epoch
        offset = publication.offset
        if last is not None and (last[0] != epoch or offset != last[1] + 1):
            if last[0] == epoch:
                if offset <= last[1]:
                    return  # already delivered by a catch-up
                self._reset(channel, StreamPosition(offset - 1, epoch), ResetReason.GAP)
            elif offset != 1:
                self._reset(channel, StreamPosition(offset - 1, epoch), ResetReason.NEW_EPOCH)
            # A new epoch from its offset 1 with the link up: the old epoch's publications all
            # came before it (one connection, in order), and nothing of the new one is missing.
        self._last[channel] = (epoch, offset)
        handler = self._handler
        if handler is not None:
            try:
                handler.handle_publication(publication)
            except Exception:  # noqa: BLE001 - one bad delivery must not stop the listener
                logger.exception("handler failed on a publication to %s", channel)

    def _reset(self, channel: str, position: StreamPosition, reason: ResetReason) -> None:
        self._last[channel] = (position.epoch, position.offset)
        self.resets += 1
        handler = self._handler
        if handler is not None:
            try:
                handler.handle_reset(StreamReset(channel, position, reason))
            except Exception:  # noqa: BLE001 - as for a publication
                logger.exception("handler failed on a stream reset of %s", channel)

    def hold(self) -> None:
        """Queue live publications until `release` (a catch-up is about to run)."""
        self._holding = True

    def release(self) -> None:
        """Deliver the queued live publications (dropping those the catch-up sent)."""
        self._holding = False
        backlog, self._backlog = self._backlog, []
        for publication in backlog:
            self._admit(publication)

    def discard(self) -> None:
        """A catch-up failed: drop the queued live publications; the next one re-reads them."""
        self._holding = False
        self._backlog = []

    async def catch_up(self, channels: Iterable[str], read: HistoryReader) -> int:
        """Deliver what each channel published since its last delivered position.

        Where the history no longer covers that position (a new epoch, or trimmed past it),
        the hub is told what may be lost (a StreamReset) and then gets every publication the
        history still holds — all of a new epoch's. Returns the number of publications
        delivered.
        """
        targets = [
            (channel, StreamPosition(last[1], last[0]))
            for channel in channels
            if (last := self._last.get(channel)) is not None
        ]
        recovered = 0
        for start in range(0, len(targets), CATCH_UP_CONCURRENCY):
            batch = targets[start : start + CATCH_UP_CONCURRENCY]
            missed = await asyncio.gather(*(_missed(c, since, read) for c, since in batch))
            # No await from here on: the resets and publications go out in stream order.
            for (channel, _), (reset, publications) in zip(batch, missed, strict=True):
                if reset is not None:
                    self._reset(channel, *reset)
                for publication in publications:
                    self._admit(publication)
                    recovered += 1
        return recovered


async def _missed(
    channel: str, since: StreamPosition, read: HistoryReader
) -> tuple[tuple[StreamPosition, ResetReason] | None, list[Publication]]:
    """What follows `since`: (None, the missed publications), or — when the history no longer
    covers `since` — (the reset's position and reason, what the history holds after it)."""
    page = await read(channel, since)
    if page.recoverable:
        return None, page.publications
    top = page.position
    if top.epoch == since.epoch and since.offset > top.offset:
        # Rolled back under the same epoch (Redis restored from a snapshot older than what
        # was delivered, docs/delivery.md): what it retains was delivered already.
        logger.warning(
            "broker stream %s rolled back from offset %d to %d (epoch %s)",
            channel,
            since.offset,
            top.offset,
            top.epoch,
        )
        return (top, ResetReason.GAP), []
    page = await read(channel, None)
    top = page.position
    first = page.publications[0].offset if page.publications else top.offset + 1
    reason = ResetReason.NEW_EPOCH if top.epoch != since.epoch else ResetReason.GAP
    logger.warning(
        "broker gap on %s not recoverable (%s: epoch %s offset %d -> epoch %s); "
        "delivering from offset %d",
        channel,
        reason.value,
        since.epoch,
        since.offset,
        top.epoch,
        first,
    )
    return (StreamPosition(first - 1, top.epoch), reason), page.publications


class Link(Protocol[L]):
    """One connection a `Reconnector` keeps up: how to open it, make it ready, watch it."""

    @property
    def link_name(self) -> str:
        """How log lines name the link."""

    async def open_link(self) -> L:
        """Connect (not yet ready)."""

    async def ready_link(self, link: L, after_outage: bool) -> None:
        """Make a fresh link useful (subscribe, catch up when `after_outage`)."""

    async def watch_link(self, link: L) -> None:
        """Return (or raise) once the link is lost."""

    def drop_link(self, link: L | None) -> None:
        """Forget and close the link (None: it never opened)."""


class Reconnector(Generic[L]):
    """Keeps one link up: open, make ready, watch; when it breaks, back off and start again.

    Delays are uniform in [0, min(cap, base * 2**attempt)] ("full jitter"), so nodes that lost
    a server together do not come back in lockstep. Composed, not inherited: the brokers' pub/sub
    links and the bridge's LISTEN connection each give it a `Link`.
    """

    def __init__(self, link: Link[L], *, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP):
        self._link = link
        self._base = base
        self._cap = cap
        self.connected = asyncio.Event()  # set while the link is up and ready
        self.reconnects = 0  # outages, each counted once however many attempts it took
        self.last_outage_seconds = 0.0

    @property
    def healthy(self) -> bool:
        return self.connected.is_set()

    async def run(self) -> None:
        link_ops = self._link
        attempt = 0
        down_since: float | None = None  # set from the first failure until the link is back
        while True:
            link: L | None = None
            try:
                link = await link_ops.open_link()
                await link_ops.ready_link(link, after_outage=down_since is not None)
                if down_since is not None:
                    self.last_outage_seconds = time.monotonic() - down_since
                    logger.info(
                        "%s re-established after %.2f s",
                        link_ops.link_name,
                        self.last_outage_seconds,
                    )
                attempt = 0
                down_since = None
                self.connected.set()
                await link_ops.watch_link(link)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect after a pause
                if down_since is None:
                    logger.warning(
                        "%s unavailable: %s", link_ops.link_name, exc or type(exc).__name__
                    )
            finally:
                self.connected.clear()
                link_ops.drop_link(link)
            if down_since is None:
                down_since = time.monotonic()
                self.reconnects += 1
            attempt += 1
            await asyncio.sleep(random.uniform(0, min(self._cap, self._base * 2**attempt)))


class PubSub(Protocol[L]):
    """What a multi-node broker does with its pub/sub link (`PubSubLink` does the rest)."""

    link_name: str

    async def _connect_link(self) -> L: ...

    async def _subscribe_link(self, link: L, channels: list[str]) -> None: ...

    async def _watch(self, link: L) -> None: ...

    def _drop_link(self, link: L | None) -> None: ...

    async def position(self, channel: str) -> StreamPosition: ...

    async def history(
        self, channel: str, since: StreamPosition | None = None, limit: int | None = None
    ) -> HistoryPage: ...


class PubSubLink(Generic[L]):
    """A broker's pub/sub link as its `Reconnector` keeps it: every channel the node listens to
    subscribed, and after an outage what each missed delivered from history first, in order,
    while live messages wait (the `DeliveryTracker`)."""

    def __init__(self, broker: PubSub[L], tracker: DeliveryTracker, channels: set[str]) -> None:
        self._broker = broker
        self._tracker = tracker
        self._channels = channels  # the broker's own set: the channels this node listens to
        self.recovered_after_reconnect = 0

    @property
    def link_name(self) -> str:
        return self._broker.link_name

    async def open_link(self) -> L:
        return await self._broker._connect_link()

    async def ready_link(self, link: L, after_outage: bool) -> None:
        channels = sorted(self._channels)
        if after_outage:
            # Hold live messages until the catch-up has delivered what came before.
            self._tracker.hold()
        await self._broker._subscribe_link(link, channels)
        if after_outage:
            read = self._broker.history
            self.recovered_after_reconnect += await self._tracker.catch_up(channels, read)
            self._tracker.release()
            logger.info("%s: %d channel(s) re-subscribed", self.link_name, len(channels))

    async def watch_link(self, link: L) -> None:
        await self._broker._watch(link)

    def drop_link(self, link: L | None) -> None:
        # Held-back messages are dropped, not delivered past a gap: the next catch-up reads
        # them from history, in order.
        self._tracker.discard()
        self._broker._drop_link(link)

    async def track_from_now(self, channel: str) -> None:
        """Record where `channel` stood once this node's subscription took effect.

        A catch-up after a reconnect then covers a channel that was quiet until the break.
        Best effort: when the read fails the hub's own position read fails too, and the
        subscribe with it.
        """
        try:
            position = await self._broker.position(channel)
        except Exception:  # noqa: BLE001 - see above
            return
        if channel in self._channels:
            self._tracker.start_at(channel, position)


class KeptPubSub(Generic[L]):
    """Everything of a multi-node broker's pub/sub link, in one part it holds: the delivery
    tracker (the broker hands it live publications), the `PubSubLink` and the `Reconnector`
    that keeps it up, and what /metrics shows of them."""

    def __init__(self, broker: PubSub[L], channels: set[str]) -> None:
        self.tracker = DeliveryTracker()
        self.link = PubSubLink(broker, self.tracker, channels)
        self.reconnector = Reconnector(self.link)

    @property
    def healthy(self) -> bool:
        return self.reconnector.healthy

    @property
    def connected(self) -> asyncio.Event:
        return self.reconnector.connected

    async def run(self) -> None:
        await self.reconnector.run()

    async def track_from_now(self, channel: str) -> None:
        await self.link.track_from_now(channel)

    def state(self) -> LinkState:
        return LinkState(
            self.reconnector.reconnects,
            self.link.recovered_after_reconnect,
            self.tracker.resets,
            self.reconnector.last_outage_seconds,
        )
