"""Exactly once per node across broker reconnects: the last position delivered per channel.

A multi-node broker's subscription can break (Redis restarted, the LISTEN connection dropped).
Publications made while this node was not listening never reach it through pub/sub; the ones
still in the channel's retained history can be won back. `DeliveryTracker` remembers, per
subscribed channel, the last (epoch, offset) handed to the hub, so that after a reconnect

1. the broker reads each channel's history since that position and delivers what is missing,
   in order (`catch_up`), while live messages wait in a backlog;
2. live messages already delivered by the catch-up are dropped (`admit`).

Nothing here runs per subscriber: one dict lookup and one tuple per publication per node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from app.realtime.broker.base import BrokerHandler
from app.realtime.history import HistoryPage, StreamPosition
from app.realtime.publication import Publication

logger = logging.getLogger("context_manager.broker")

HistoryReader = Callable[[str, StreamPosition], Awaitable[HistoryPage]]

# Channels read concurrently during a catch-up: enough to be quick, few enough for the pool.
CATCH_UP_CONCURRENCY = 32


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
