"""Exactly once per node across broker reconnects: the last position delivered per channel.

A multi-node broker's subscription can break (Redis restarted, the LISTEN connection dropped).
Publications made while this node was not listening never reach it through pub/sub; the ones
still in the channel's retained history can be won back. `DeliveryTracker` remembers, per
subscribed channel, the last (epoch, offset) handed to the hub, so that after a reconnect

1. the broker reads each channel's history since that position and delivers what is missing,
   in order (`catch_up`), while live messages wait in a backlog;
2. live messages already delivered by the catch-up are dropped (`admit`).

Nothing here runs per subscriber: one dict lookup and one tuple per publication per node.

`ListenLoop` is the loop both multi-node brokers keep their pub/sub link with: connect,
subscribe, catch up after a reconnect, watch, and back off with full jitter when it breaks.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

from app.realtime.broker.base import BrokerHandler
from app.realtime.history import HistoryPage, StreamPosition
from app.realtime.publication import Publication

logger = logging.getLogger("context_manager.broker")

HistoryReader = Callable[[str, StreamPosition], Awaitable[HistoryPage]]

# Channels read concurrently during a catch-up: enough to be quick, few enough for the pool.
CATCH_UP_CONCURRENCY = 32

# Reconnect delays: uniform in [0, min(CAP, BASE * 2**attempt)] seconds ("full jitter"), so
# nodes that lost the server together do not come back in lockstep.
BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0

L = TypeVar("L")


class DeliveryTracker:
    """Per-channel last delivered position, duplicate filter and post-reconnect catch-up."""

    __slots__ = ("_last", "_handler", "_backlog", "_holding")

    def __init__(self) -> None:
        self._last: dict[str, tuple[str, int]] = {}
        self._handler: BrokerHandler | None = None
        self._backlog: list[Publication] = []
        self._holding = False

    def bind(self, handler: BrokerHandler | None) -> None:
        self._handler = handler

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
        if last is not None and last[0] == epoch and publication.offset <= last[1]:
            return  # already delivered by a catch-up
        self._last[channel] = (epoch, publication.offset)
        handler = self._handler
        if handler is not None:
            try:
                handler.handle_publication(publication)
            except Exception:  # noqa: BLE001 - one bad delivery must not stop the listener
                logger.exception("handler failed on a publication to %s", channel)

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

        Channels whose history no longer covers the gap (new epoch, trimmed) are skipped:
        their subscribers see the next publication's epoch or offset jump and recover the way
        a reconnecting client does. Returns the number of publications won back.
        """
        targets = [
            (channel, StreamPosition(last[1], last[0]))
            for channel in channels
            if (last := self._last.get(channel)) is not None
        ]
        recovered = 0
        for start in range(0, len(targets), CATCH_UP_CONCURRENCY):
            batch = targets[start : start + CATCH_UP_CONCURRENCY]
            pages = await asyncio.gather(*(read(channel, since) for channel, since in batch))
            for (channel, since), page in zip(batch, pages, strict=True):
                if not page.recoverable:
                    logger.warning(
                        "broker gap on %s not recoverable (epoch %s -> %s)",
                        channel,
                        since.epoch,
                        page.position.epoch,
                    )
                    continue
                for publication in page.publications:
                    self._admit(publication)
                    recovered += 1
        return recovered


class ListenLoop(Generic[L]):
    """The reconnecting pub/sub link of a multi-node broker; the broker supplies the link.

    A broker subclasses it, sets the state below in its ``__init__``, implements the four
    link methods, and runs ``_listen(self.history)`` as a task.
    """

    link_name = "pub/sub"  # how log lines name the link
    _tracker: DeliveryTracker
    _channels: set[str]
    _connected: asyncio.Event
    _healthy: bool
    reconnects: int
    recovered_after_reconnect: int
    last_outage_seconds: float

    async def _connect_link(self) -> L:
        """Open the link (not yet subscribed)."""
        raise NotImplementedError

    async def _subscribe_link(self, link: L, channels: list[str]) -> None:
        """Subscribe the link to `channels` (every channel this node listens to)."""
        raise NotImplementedError

    async def _watch(self, link: L) -> None:
        """Return (or raise) once the link is lost."""
        raise NotImplementedError

    def _drop_link(self, link: L | None) -> None:
        """Forget and close the link (None: it never opened)."""
        raise NotImplementedError

    async def _listen(self, read: HistoryReader) -> None:
        attempt = 0
        down_since: float | None = None  # set from the first failure until the link is back
        while True:
            link: L | None = None
            try:
                link = await self._connect_link()
                channels = sorted(self._channels)
                if down_since is not None:
                    # Hold live messages until the catch-up has delivered what came before.
                    self._tracker.hold()
                await self._subscribe_link(link, channels)
                if down_since is not None:
                    self.recovered_after_reconnect += await self._tracker.catch_up(channels, read)
                    self._tracker.release()
                    self.last_outage_seconds = time.monotonic() - down_since
                    logger.info(
                        "%s re-established after %.2f s; %d channel(s) re-subscribed",
                        self.link_name,
                        self.last_outage_seconds,
                        len(channels),
                    )
                attempt = 0
                down_since = None
                self._healthy = True
                self._connected.set()
                await self._watch(link)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect after a pause
                if down_since is None:
                    logger.warning("%s unavailable: %s", self.link_name, exc or type(exc).__name__)
            finally:
                self._healthy = False
                self._connected.clear()
                # Held-back messages are dropped, not delivered past a gap: the next
                # catch-up reads them from history, in order.
                self._tracker.discard()
                self._drop_link(link)
            if down_since is None:
                down_since = time.monotonic()
                self.reconnects += 1
            attempt += 1
            await asyncio.sleep(random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)))
