"""Cluster-wide presence: which agents are online on any node, and node liveness.

On one node `AgentPresence` (presence.py) decides an agent's first and last connection. With
many nodes the cluster decides: the ConnectionManager asks `Cluster.agent_online` when an
agent's first connection on *this* node opens and `Cluster.agent_offline` when its last one on
this node closes; the store answers whether that was the first (last) anywhere, atomically, so
`agent.connected` / `agent.disconnected` are published once for the whole cluster.

A node that dies without closing its connections (SIGKILL, power loss) cannot say so. Every
node heartbeats every NODE_HEARTBEAT_INTERVAL seconds; a node silent for NODE_TTL seconds is
dead. Each heartbeat round a live node tries to sweep: under a lock, the store removes the
dead nodes' agents and channel-presence entries and returns the agents that thereby went
offline everywhere, and that node publishes their `agent.disconnected` — once. Bound: an agent
on a killed node is announced gone within NODE_TTL + NODE_HEARTBEAT_INTERVAL seconds (20 s
with the defaults; docs/architecture.md).

A node that finds itself unknown at a heartbeat (it was swept while stalled, or the store lost
its data: Redis restarted) re-announces its agents and channel presence. A node starting
under a NODE_ID that a dead process used first sweeps its own stale entries.

Stores: presence_redis.py (Redis), presence_postgres.py (PostgreSQL only). Both are also the
node's `PresenceStore` (who is subscribed to a channel, cluster-wide).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any, Protocol

from app.core.config import Settings
from app.core.tasks import cancel_and_wait
from app.realtime.presence import ClientInfo

if TYPE_CHECKING:
    from app.realtime.manager import ConnectionManager

logger = logging.getLogger("context_manager.cluster")


class ClusterStore(Protocol):
    """What a cluster presence backend does; every method is one atomic step in the store."""

    async def heartbeat(self) -> bool:
        """Record this node alive; True when the store did not know it (swept, or data lost)."""

    async def agent_online(self, agent_id: str) -> bool:
        """This node holds `agent_id` now; True when no node held it before."""

    async def agent_offline(self, agent_id: str) -> bool:
        """This node no longer holds `agent_id`; True when it was the last node to hold it."""

    async def sweep(self, node_id: str | None = None) -> list[tuple[str, str]]:
        """Remove dead nodes (or `node_id`); return the (agent, node) pairs that went offline."""

    async def try_lock(self, seconds: float) -> bool:
        """Take the sweep lock for `seconds` unless another node holds it."""

    async def online_agents(self) -> dict[str, list[str]]:
        """Agent id → the nodes holding it, cluster-wide."""

    async def live_nodes(self) -> list[str]:
        """Nodes whose heartbeat is within NODE_TTL."""

    async def join(self, channel: str, info: ClientInfo) -> None: ...

    async def leave(self, channel: str, client_id: str) -> None: ...

    async def members(self, channel: str) -> dict[str, ClientInfo]: ...

    async def close(self) -> None: ...


class Cluster:
    """Heartbeats, sweeps and the first/last decisions, over a `ClusterStore`."""

    def __init__(self, store: ClusterStore, node_id: str, interval: float, ttl: float) -> None:
        self.store = store
        self.node_id = node_id
        self.interval = interval
        self.ttl = ttl
        self._manager: ConnectionManager | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        # The last heartbeat's view, for /stats and /metrics (read without a round trip).
        self.nodes: list[str] = []
        self.agents_online = 0
        self.swept_agents = 0
        self.last_heartbeat: float | None = None

    # --- the PresenceStore protocol: delegated ----------------------------------------------

    async def join(self, channel: str, info: ClientInfo) -> None:
        await self.store.join(channel, info)

    async def leave(self, channel: str, client_id: str) -> None:
        await self.store.leave(channel, client_id)

    async def members(self, channel: str) -> dict[str, ClientInfo]:
        return await self.store.members(channel)

    # --- agent first / last -----------------------------------------------------------------

    async def agent_online(self, agent_id: str) -> bool:
        return await self.store.agent_online(agent_id)

    async def agent_offline(self, agent_id: str) -> bool:
        return await self.store.agent_offline(agent_id)

    async def online_agents(self) -> dict[str, list[str]]:
        """The cluster view behind GET /api/agents: agent id → nodes holding a connection."""
        return await self.store.online_agents()

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self, manager: ConnectionManager) -> None:
        self._manager = manager
        try:
            # Entries a previous process under this NODE_ID left behind are stale.
            await self._announce_gone(await self.store.sweep(self.node_id))
            await self.store.heartbeat()
            await self._refresh_view()
        except Exception:  # noqa: BLE001 - the loop below keeps trying
            logger.warning("cluster presence store unavailable at start", exc_info=True)
        self._task = asyncio.create_task(self._run(), name="cluster-heartbeat")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
            try:
                # Leaving cleanly: nothing of this node stays behind for others to sweep.
                await self._announce_gone(await self.store.sweep(self.node_id))
            except Exception:  # noqa: BLE001 - the others will sweep it after NODE_TTL
                logger.warning("could not deregister node %s", self.node_id, exc_info=True)
        await self.store.close()

    def view(self) -> dict[str, Any]:
        """The cluster part of GET /stats."""
        return {
            "nodes": list(self.nodes),
            "nodes_alive": len(self.nodes),
            "agents_online": self.agents_online,
            "swept_agents": self.swept_agents,
            "heartbeat_interval": self.interval,
            "node_ttl": self.ttl,
            "last_heartbeat_age": (
                round(time.monotonic() - self.last_heartbeat, 3)
                if self.last_heartbeat is not None
                else None
            ),
        }

    async def _run(self) -> None:
        while True:
            # Jitter spreads the nodes' heartbeats and sweeps over the interval.
            await asyncio.sleep(self.interval * random.uniform(0.8, 1.0))
            try:
                await self.beat()
                if self._failing:
                    logger.info("cluster presence store reachable again")
                self._failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep beating; report once per outage
                if not self._failing:
                    logger.warning("cluster heartbeat failed: %s", exc or type(exc).__name__)
                self._failing = True

    async def beat(self) -> None:
        """One round: heartbeat, re-announce if forgotten, sweep dead nodes, refresh the view."""
        if await self.store.heartbeat():
            logger.warning("node %s was unknown to the cluster: re-announcing", self.node_id)
            await self._resync()
        self.last_heartbeat = time.monotonic()
        if await self.store.try_lock(self.interval):
            gone = await self.store.sweep()
            if gone:
                logger.info(
                    "swept dead node(s) %s: %d agent(s) gone",
                    sorted({node for _, node in gone}),
                    len(gone),
                )
            await self._announce_gone(gone)
        await self._refresh_view()

    async def _refresh_view(self) -> None:
        self.nodes = sorted(await self.store.live_nodes())
        self.agents_online = len(await self.store.online_agents())

    async def _resync(self) -> None:
        manager = self._manager
        if manager is None:
            return
        for agent_id in list(manager.presence.online()):
            if await self.store.agent_online(agent_id):
                await manager.announce_agent_event(
                    "agent.connected",
                    agent_id,
                    {"agent_id": agent_id, "node_id": self.node_id, "reason": "resync"},
                )
        for connection in list(manager.connections.values()):
            info = manager.client_info(connection)
            for channel in list(connection.subscriptions):
                await self.store.join(channel, info)

    async def _announce_gone(self, gone: list[tuple[str, str]]) -> None:
        manager = self._manager
        if manager is None:
            return
        for agent_id, node_id in gone:
            self.swept_agents += 1
            await manager.announce_agent_event(
                "agent.disconnected",
                agent_id,
                {
                    "agent_id": agent_id,
                    "session_id": None,
                    "client_id": None,
                    "node_id": node_id,
                    "close_code": None,
                    "reason": "node_lost",
                },
            )


def create_cluster(settings: Settings, node_id: str) -> Cluster | None:
    """The cluster presence for the configured broker; None for the single-node default."""
    kind = settings.broker_kind
    store: ClusterStore
    if kind == "redis" and (settings.redis_cluster or settings.redis_shard_urls):
        from app.realtime.presence_redis import RedisClusterStore

        # Presence is not sharded: the first shard, or one slot of the cluster (see
        # presence_redis.py for why).
        cluster_url = settings.redis_cluster
        store = RedisClusterStore(
            cluster_url or settings.redis_shard_urls[0],
            settings.broker_prefix,
            node_id,
            settings.node_ttl,
            cluster=cluster_url is not None,
        )
    elif kind == "postgres":
        from app.realtime.presence_postgres import PostgresClusterStore

        store = PostgresClusterStore(
            settings.database_url, settings.broker_prefix, node_id, settings.node_ttl
        )
    else:
        return None
    return Cluster(store, node_id, settings.node_heartbeat_interval, settings.node_ttl)
