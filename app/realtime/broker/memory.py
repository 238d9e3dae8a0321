"""The in-process broker of the embedded default: one node, delivery is a function call.

Each channel has a stream: an epoch chosen when the stream is created (so a restart means a
new epoch), an offset counter, and a ring of retained publications trimmed by the channel
kind's size and age (HISTORY_* settings). Streams idle for longer than their retention are
dropped by a periodic sweep; publishing there again starts a new epoch.

Idempotency keys live in the stream too: key → (offset, expiry), for the kind's history TTL,
at most IDEMPOTENCY_KEYS per channel (the oldest go first), dropped with the stream.
"""

from __future__ import annotations

import asyncio
import collections
import time

from app.core.tasks import cancel_and_wait
from app.realtime.broker.base import BrokerHandler, DuplicatePublication, LinkState
from app.realtime.history import (
    HistoryPage,
    HistoryPolicies,
    HistoryPolicy,
    StreamPosition,
    history_page,
    new_epoch,
)
from app.realtime.publication import Publication

SWEEP_SECONDS = 60.0
# Idempotency keys remembered per channel: a bound on what clients can make a node hold.
IDEMPOTENCY_KEYS = 10_000


class _Stream:
    __slots__ = ("epoch", "offset", "policy", "entries", "last_publish", "keys")

    def __init__(self, policy: HistoryPolicy) -> None:
        self.epoch = new_epoch()
        self.offset = 0
        self.policy = policy
        # (monotonic time of publish, publication), oldest first.
        self.entries: collections.deque[tuple[float, Publication]] = collections.deque()
        self.last_publish = time.monotonic()
        # Idempotency key → (offset, monotonic expiry), oldest first; made on first use.
        self.keys: collections.OrderedDict[str, tuple[int, float]] | None = None

    def first_with(self, key: str, now: float) -> int | None:
        """The offset `key` was accepted at, if it still counts (within the TTL)."""
        keys = self.keys
        if keys is None:
            return None
        while keys:  # expired keys go first: they are the oldest
            oldest = next(iter(keys.values()))
            if oldest[1] > now:
                break
            keys.popitem(last=False)
        first = keys.get(key)
        return first[0] if first is not None else None

    def remember(self, key: str, offset: int, now: float) -> None:
        keys = self.keys
        if keys is None:
            keys = self.keys = collections.OrderedDict()
        keys[key] = (offset, now + self.policy.ttl)
        if len(keys) > IDEMPOTENCY_KEYS:
            keys.popitem(last=False)

    def trim(self, now: float) -> None:
        entries = self.entries
        while len(entries) > self.policy.size:
            entries.popleft()
        horizon = now - self.policy.ttl
        while entries and entries[0][0] < horizon:
            entries.popleft()

    @property
    def position(self) -> StreamPosition:
        return StreamPosition(self.offset, self.epoch)


class MemoryBroker:
    def __init__(self, node_id: str, policies: HistoryPolicies) -> None:
        self._node_id = node_id
        self._policies = policies
        self._handler: BrokerHandler | None = None
        self._channels: set[str] = set()
        self._streams: dict[str, _Stream] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, handler: BrokerHandler) -> None:
        self._handler = handler
        self._sweeper = asyncio.create_task(self._sweep(), name="memory-broker-sweep")

    async def close(self) -> None:
        self._handler = None
        await cancel_and_wait(self._sweeper)

    def _stream(self, channel: str) -> _Stream:
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = _Stream(self._policies.for_channel(channel))
        return stream

    async def publish(
        self, publication: Publication, idempotency_key: str | None = None
    ) -> Publication:
        stream = self._stream(publication.channel)
        now = time.monotonic()
        if idempotency_key is not None:
            first = stream.first_with(idempotency_key, now)
            if first is not None:
                raise DuplicatePublication(publication.channel, StreamPosition(first, stream.epoch))
            stream.remember(idempotency_key, stream.offset + 1, now)
        stream.offset += 1
        publication.offset = stream.offset
        publication.epoch = stream.epoch
        publication.origin = self._node_id
        stream.last_publish = now
        if stream.policy.size:
            stream.entries.append((now, publication))
            stream.trim(now)
        handler = self._handler
        if handler is not None and publication.channel in self._channels:
            handler.handle_publication(publication)
        return publication

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    async def history(
        self, channel: str, since: StreamPosition | None = None, limit: int | None = None
    ) -> HistoryPage:
        stream = self._stream(channel)
        stream.trim(time.monotonic())
        return history_page([p for _, p in stream.entries], stream.position, since, limit)

    async def position(self, channel: str) -> StreamPosition:
        return self._stream(channel).position

    def _sweep_once(self, now: float) -> None:
        for channel in list(self._streams):
            stream = self._streams[channel]
            stream.trim(now)
            if stream.keys is not None:
                stream.first_with("", now)  # drops the expired keys
            if not stream.entries and now - stream.last_publish > max(stream.policy.ttl, 3600):
                del self._streams[channel]

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            self._sweep_once(time.monotonic())

    @property
    def healthy(self) -> bool:
        return True

    def link_state(self) -> LinkState:
        return LinkState()  # one process: no link to lose, nothing to win back
