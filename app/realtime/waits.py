"""Waiting for a publication without a WebSocket: the long polls of agents that hold none.

A claim with `wait_seconds`, an inbox read with `wait`, MCP's `wait_for_messages`: each waits
until something on a channel may have changed its answer, then asks the database again. The
wake-up is a publication the node receives from the broker — the bridge publishes every
outbox event — so a waiter on any node wakes within the fan-out's latency of the commit that
concerns it, and nothing polls.

    async with manager.waits.watch("agents/coder", is_message) as watch:
        while True:
            answer = await read()          # after watching starts: nothing slips between
            if answer or watch.expired:
                return answer
            await watch.wait()

One hub tap per channel per node, however many wait on it (hub.tap). A watcher is an
`asyncio.Event` and a filter on the event name; the tap sets the events of the watchers whose
filter matches, in `handle_publication`, without awaiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from app.realtime.hub import BrokerUnavailable, Hub
from app.realtime.publication import Publication

EventFilter = Callable[[str], bool]


class Watch:
    """One waiter's view of a channel: woken by matching publications, until `deadline`."""

    __slots__ = ("_event", "_matches", "_deadline", "_loop")

    def __init__(self, matches: EventFilter, timeout: float) -> None:
        self._event = asyncio.Event()
        self._matches = matches
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + timeout

    def notify(self, publication: Publication) -> None:
        if self._matches(publication.event):
            self._event.set()

    @property
    def expired(self) -> bool:
        return self._loop.time() >= self._deadline

    @property
    def remaining(self) -> float:
        return max(0.0, self._deadline - self._loop.time())

    async def wait(self) -> bool:
        """Until a matching publication (True) or the deadline (False); then re-arm."""
        try:
            async with asyncio.timeout(self.remaining):
                await self._event.wait()
        except TimeoutError:
            return False
        self._event.clear()
        return True


class _Channel:
    """The waiters of one channel and the hub tap that wakes them."""

    __slots__ = ("watches", "ready")

    def __init__(self) -> None:
        self.watches: set[Watch] = set()
        # Resolved once the hub tap is live (True) or could not be made (False).
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def tap(self, publication: Publication) -> None:
        for watch in self.watches:
            watch.notify(publication)


class Waits:
    """The node's waiters, grouped by channel (one hub tap per channel)."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._channels: dict[str, _Channel] = {}

    @property
    def waiting(self) -> int:
        return sum(len(entry.watches) for entry in self._channels.values())

    @contextlib.asynccontextmanager
    async def watch(
        self, channel: str, matches: EventFilter, timeout: float
    ) -> AsyncIterator[Watch]:
        """Watch `channel` for `timeout` seconds (live once this has entered)."""
        watch = Watch(matches, timeout)
        entry = self._channels.get(channel)
        first = entry is None
        if entry is None:
            entry = self._channels[channel] = _Channel()
        entry.watches.add(watch)
        try:
            if first:
                try:
                    await self._hub.tap(channel, entry.tap)
                except BaseException:
                    entry.ready.set_result(False)
                    raise
                entry.ready.set_result(True)
            elif not await asyncio.shield(entry.ready):
                raise BrokerUnavailable(channel)
            yield watch
        finally:
            entry.watches.discard(watch)
            if not entry.watches and self._channels.get(channel) is entry:
                del self._channels[channel]
                if entry.ready.done() and entry.ready.result():
                    await self._hub.untap(channel, entry.tap)
