"""The Redis broker on Redis Cluster: every master a shard, sharded pub/sub (Redis 7).

REDIS_CLUSTER_URL (or a REDIS_URL with ``?cluster=true``) names any node of the cluster. At
start the broker reads the slot map and makes one shard (a `ClusterShard`, a `RedisBroker`) per
master; a channel goes to the master owning the hash slot of ``{<channel>}`` — the hash tag its
keys already carry, so a channel's meta hash, stream, idempotency keys and shard channel
``cm:{<channel>}:p`` are in one slot, and the publish script, which ends with SPUBLISH instead
of PUBLISH, runs on one master, atomically. Each node opens one pub/sub connection per master
and SSUBSCRIBEs there, so a publication crosses only its master, never the cluster bus (plain
PUBLISH in a cluster is broadcast to every node).

Commands go through redis-py's `RedisCluster` (it follows MOVED/ASK and failovers). A shard's
pub/sub link that breaks asks the cluster again where its first slot lives before it
reconnects, so after a failover it follows the promoted replica; what it missed is caught up
from history as on a single Redis. Moving slots between masters while nodes run (resharding)
is not followed: a slot's channels stay routed to the shard that owned it at start, whose
SSUBSCRIBE is refused (MOVED) by its new master's peer — restart the nodes, one at a time,
after a resharding (docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import RedisError

from app.core.tasks import cancel_and_wait
from app.realtime.broker.base import BrokerHandler
from app.realtime.broker.redis import CONNECT_TIMEOUT, PING_INTERVAL, RedisBroker
from app.realtime.broker.redis_sharded import ShardedRedisBroker
from app.realtime.history import HistoryPolicies
from app.realtime.hub import BrokerUnavailable

logger = logging.getLogger("context_manager.broker.redis")

DISCOVERY_RETRY = 1.0


def plain_url(url: str) -> str:
    """`url` without the ``cluster`` query option (ours, not redis-py's)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "cluster"]
    return urlunsplit(parts._replace(query=urlencode(query)))


def cluster_client(url: str) -> RedisCluster:
    """A RedisCluster client for the broker and cluster presence."""
    return RedisCluster.from_url(
        plain_url(url), socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT + 2
    )


class ClusterShard(RedisBroker):
    """One master of a Redis Cluster: shard channels, commands through the cluster client."""

    subscribe_command = b"SSUBSCRIBE"
    unsubscribe_command = b"SUNSUBSCRIBE"
    publish_command = "spublish"

    def __init__(
        self,
        node_id: str,
        policies: HistoryPolicies,
        url: str,
        prefix: str,
        cluster: RedisCluster,
        first_slot: int,
        name: str,
        ping_interval: float = PING_INTERVAL,
    ) -> None:
        super().__init__(node_id, policies, plain_url(url), prefix, ping_interval)
        self._cluster = cluster
        self._first_slot = first_slot
        self.name = name
        self.link_name = f"Redis Cluster shard pub/sub ({name})"
        self._shard_prefix = f"{prefix}:{{".encode()

    def _pubsub_name(self, channel: str) -> bytes:
        return self._shard_prefix + channel.encode() + b"}:p"

    def _channel_of(self, name: bytes) -> str:
        return name[len(self._shard_prefix) : -3].decode()

    def _make_client(self) -> Any:
        return self._cluster

    async def _close_client(self, client: Any) -> None:
        """The cluster client is shared by the shards; the broker closes it."""

    async def _link_address(self) -> tuple[str, int]:
        if self.link_state().reconnects:
            # After a failover the slot has a new master: ask the cluster.
            with contextlib.suppress(RedisError, OSError):
                await self._cluster.nodes_manager.initialize()
        node = self._cluster.nodes_manager.get_node_from_slot(self._first_slot)
        return node.host, int(node.port)


class RedisClusterBroker(ShardedRedisBroker):
    """The Redis broker over a Redis Cluster (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        policies: HistoryPolicies,
        url: str,
        prefix: str = "cm",
        ping_interval: float = PING_INTERVAL,
    ) -> None:
        super().__init__([], self._slot_owner)
        self._node_id = node_id
        self._policies = policies
        self._url = url
        self._prefix = prefix
        self._ping_interval = ping_interval
        self._cluster: RedisCluster | None = None
        self._owners: list[int] = []
        self._handler: BrokerHandler | None = None
        self._discovery: asyncio.Task[None] | None = None

    def _slot_owner(self, channel: str) -> int:
        if not self._owners:
            raise BrokerUnavailable(channel)
        return self._owners[key_slot(f"{self._prefix}:{{{channel}}}:m".encode())]

    async def start(self, handler: BrokerHandler) -> None:
        self._handler = handler
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT + 2):
                await self._discover()
        except (RedisError, OSError, TimeoutError) as exc:
            # As with one Redis: the node starts, unready, and keeps trying.
            logger.warning("Redis Cluster is not reachable yet (%s); retrying", exc)
            self._discovery = asyncio.create_task(self._keep_discovering())
            return
        await super().start(handler)

    async def _keep_discovering(self) -> None:
        while not self.shards:
            await asyncio.sleep(DISCOVERY_RETRY)
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT + 2):
                    await self._discover()
            except (RedisError, OSError, TimeoutError):
                continue
            assert self._handler is not None
            await super().start(self._handler)

    async def _discover(self) -> None:
        """Read the slot map: one shard per master, each slot → its master's shard."""
        if self._cluster is None:
            self._cluster = cluster_client(self._url)
        cluster = self._cluster
        await cluster.initialize()
        slots = cluster.nodes_manager.slots_cache
        masters = sorted({nodes[0].name for nodes in slots.values()})
        index = {name: i for i, name in enumerate(masters)}
        owners = [0] * REDIS_CLUSTER_HASH_SLOTS
        first: dict[str, int] = {}
        for slot in range(REDIS_CLUSTER_HASH_SLOTS):
            nodes = slots.get(slot)
            if not nodes:
                raise RedisError(f"hash slot {slot} has no master (cluster not ready)")
            owners[slot] = index[nodes[0].name]
            first.setdefault(nodes[0].name, slot)
        self.shards = [
            ClusterShard(
                self._node_id,
                self._policies,
                self._url,
                self._prefix,
                cluster,
                first[name],
                name,
                self._ping_interval,
            )
            for name in masters
        ]
        self._owners = owners
        logger.info("Redis Cluster: %d master(s) %s", len(masters), ", ".join(masters))

    async def close(self) -> None:
        await cancel_and_wait(self._discovery)
        await super().close()
        if self._cluster is not None:
            await self._cluster.aclose()
            self._cluster = None
