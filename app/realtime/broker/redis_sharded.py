"""Channels sharded over several Redis: each channel lives, whole, on the shard it hashes to.

A shard is a `RedisBroker` (redis.py) — its own command pool and its own pub/sub link — so a
node subscribes to each shard once, and everything of one channel (offset counter, stream,
idempotency keys, pub/sub) is on one shard: the publish script stays a single atomic step, and
order and exactly-once per channel are what one Redis gives. A shard's outage is its channels'
alone: their publishes and subscribes fail (BrokerUnavailable), its link reconnects and catches
up as a single Redis does (resume.py), while the other shards keep flowing.

Which shard: a consistent-hash ring (`HashRing`), keyed by each shard's name (host:port/db),
so the order of REDIS_SHARDS does not matter and adding a shard moves about 1/(N+1) of the
channels (those whose ring segment the new shard takes), all of them to the new shard. A moved
channel starts on its new shard with no stream: a new epoch from offset 1, so a client
resuming from the old epoch gets `recovered: false` — the explicit notice — not a silent gap;
the old shard's keys expire with their TTLs (docs/scaling.md). Every node must list the same
shards: a node with another list would put a channel's publications on another shard.

Redis Cluster (redis_cluster.py) is the same broker with another router: the cluster's hash
slots decide, and each master is a shard.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
from collections.abc import Callable, Sequence

from app.realtime.broker.base import BrokerHandler, LinkState
from app.realtime.broker.redis import RedisBroker
from app.realtime.history import HistoryPage, StreamPosition
from app.realtime.publication import Publication

# Points per shard on the ring: enough that shards get even shares (±10 % at 160).
RING_POINTS = 160


def _hash(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Consistent hashing: `lookup(key)` is the index of the shard owning `key`."""

    def __init__(self, names: Sequence[str], points: int = RING_POINTS) -> None:
        if not names:
            raise ValueError("a hash ring needs at least one shard")
        if len(set(names)) != len(names):
            raise ValueError(f"shards must be distinct: {list(names)}")
        ring = sorted(
            (_hash(f"{name}#{point}"), index)
            for index, name in enumerate(names)
            for point in range(points)
        )
        self._hashes = [h for h, _ in ring]
        self._owners = [index for _, index in ring]

    def lookup(self, key: str) -> int:
        position = bisect.bisect(self._hashes, _hash(key))
        return self._owners[position % len(self._owners)]


class ShardedRedisBroker:
    """The Broker contract over several `RedisBroker` shards (see the module docstring)."""

    def __init__(self, shards: Sequence[RedisBroker], route: Callable[[str], int]) -> None:
        self.shards = list(shards)
        self._route = route

    @classmethod
    def over(cls, shards: Sequence[RedisBroker]) -> ShardedRedisBroker:
        """Shards chosen by consistent hashing of the channel name."""
        ring = HashRing([shard.name for shard in shards])
        return cls(shards, ring.lookup)

    def shard_for(self, channel: str) -> RedisBroker:
        """The shard that holds `channel`."""
        return self.shards[self._route(channel)]

    async def start(self, handler: BrokerHandler) -> None:
        # Each shard waits for its link a few seconds at most; a shard that is down does not
        # hold the node back (it keeps reconnecting, its channels unavailable meanwhile).
        await asyncio.gather(*(shard.start(handler) for shard in self.shards))

    async def close(self) -> None:
        await asyncio.gather(*(shard.close() for shard in self.shards))

    async def publish(
        self, publication: Publication, idempotency_key: str | None = None
    ) -> Publication:
        return await self.shard_for(publication.channel).publish(publication, idempotency_key)

    async def subscribe(self, channel: str) -> None:
        await self.shard_for(channel).subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        await self.shard_for(channel).unsubscribe(channel)

    async def history(
        self, channel: str, since: StreamPosition | None = None, limit: int | None = None
    ) -> HistoryPage:
        return await self.shard_for(channel).history(channel, since, limit)

    async def position(self, channel: str) -> StreamPosition:
        return await self.shard_for(channel).position(channel)

    @property
    def healthy(self) -> bool:
        """True while any shard delivers: one shard's outage must not take the node out of
        rotation (/readyz), since every other shard's channels still work on it."""
        return any(shard.healthy for shard in self.shards)

    def shard_health(self) -> dict[str, bool]:
        """Each shard's name → whether its link is up (for /stats and logs)."""
        return {shard.name: shard.healthy for shard in self.shards}

    # --- counters, summed over the shards (/metrics) -------------------------------------

    def link_state(self) -> LinkState:
        return sum((shard.link_state() for shard in self.shards), LinkState())
