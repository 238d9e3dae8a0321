"""Cluster presence in PostgreSQL, for clusters without Redis (BROKER=postgres; cluster.py).

Tables `cluster_nodes`, `cluster_agents`, `cluster_clients` (app/db/broker_models.py), rows
under the cluster's namespace. Every agent change and every sweep runs in a transaction that
first takes one transaction-scoped advisory lock per namespace, so "first anywhere", "last
anywhere" and "removed by the sweep" are decided one at a time, as Redis scripts are. Agent
connects and disconnects are rare next to messages, so one lock per cluster costs nothing
that matters. Time is the database's `now()`; node clocks never have to agree.
"""

from __future__ import annotations

import asyncpg
import orjson

from app.db.engine import asyncpg_dsn
from app.realtime.presence import ClientInfo

PRESENCE_LOCK = 0x636D7072  # "cmpr", combined with the namespace's hash

HEARTBEAT_SQL = """
INSERT INTO cluster_nodes (namespace, node_id, heartbeat_at) VALUES ($1, $2, now())
ON CONFLICT (namespace, node_id) DO UPDATE SET heartbeat_at = now()
RETURNING (xmax = 0) AS inserted
"""

SWEEP_SQL = """
WITH dead AS (
    DELETE FROM cluster_nodes
    WHERE namespace = $1 AND (
        ($2::text IS NOT NULL AND node_id = $2::text)
        OR ($2::text IS NULL AND heartbeat_at < now() - make_interval(secs => $3::float8))
    )
    RETURNING node_id
), named AS (
    SELECT node_id FROM dead UNION SELECT $2::text WHERE $2::text IS NOT NULL
), removed AS (
    DELETE FROM cluster_agents a USING named
    WHERE a.namespace = $1 AND a.node_id = named.node_id
    RETURNING a.agent_id, a.node_id
), clients AS (
    DELETE FROM cluster_clients c USING named
    WHERE c.namespace = $1 AND c.node_id = named.node_id
    RETURNING 1
)
SELECT DISTINCT ON (r.agent_id) r.agent_id, r.node_id
FROM removed r
WHERE NOT EXISTS (
    SELECT 1 FROM cluster_agents a
    WHERE a.namespace = $1 AND a.agent_id = r.agent_id
      AND a.node_id NOT IN (SELECT node_id FROM named)
)
ORDER BY r.agent_id
"""


class PostgresClusterStore:
    """`ClusterStore` and `PresenceStore` over PostgreSQL (see the module docstring)."""

    def __init__(self, database_url: str, namespace: str, node_id: str, node_ttl: float) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._namespace = namespace
        self._node = node_id
        self._ttl = node_ttl
        self._pool: asyncpg.Pool | None = None

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=3, timeout=5, command_timeout=10
            )
        return self._pool

    async def _locked(self, connection: asyncpg.Connection) -> None:
        await connection.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", PRESENCE_LOCK, self._namespace
        )

    async def heartbeat(self) -> bool:
        pool = await self._get_pool()
        return bool(await pool.fetchval(HEARTBEAT_SQL, self._namespace, self._node))

    async def agent_online(self, agent_id: str) -> bool:
        pool = await self._get_pool()
        async with pool.acquire() as connection, connection.transaction():
            await self._locked(connection)
            await connection.execute(
                "INSERT INTO cluster_agents (namespace, agent_id, node_id) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING",
                self._namespace,
                agent_id,
                self._node,
            )
            holders = await connection.fetchval(
                "SELECT count(*) FROM cluster_agents WHERE namespace = $1 AND agent_id = $2",
                self._namespace,
                agent_id,
            )
            return bool(holders == 1)

    async def agent_offline(self, agent_id: str) -> bool:
        pool = await self._get_pool()
        async with pool.acquire() as connection, connection.transaction():
            await self._locked(connection)
            removed = await connection.fetchval(
                "DELETE FROM cluster_agents WHERE namespace = $1 AND agent_id = $2"
                " AND node_id = $3 RETURNING 1",
                self._namespace,
                agent_id,
                self._node,
            )
            if removed is None:
                return False  # swept while this node stalled: already reported gone
            holders = await connection.fetchval(
                "SELECT count(*) FROM cluster_agents WHERE namespace = $1 AND agent_id = $2",
                self._namespace,
                agent_id,
            )
            return bool(holders == 0)

    async def sweep(self, node_id: str | None = None) -> list[tuple[str, str]]:
        pool = await self._get_pool()
        async with pool.acquire() as connection, connection.transaction():
            await self._locked(connection)
            rows = await connection.fetch(SWEEP_SQL, self._namespace, node_id, self._ttl)
        return [(row["agent_id"], row["node_id"]) for row in rows]

    async def try_lock(self, seconds: float) -> bool:
        # The sweep itself runs under the namespace's lock; concurrent sweeps are harmless
        # (the second finds nothing), so every node may try.
        return True

    async def online_agents(self) -> dict[str, list[str]]:
        pool = await self._get_pool()
        rows = await pool.fetch(
            "SELECT agent_id, array_agg(node_id ORDER BY node_id) AS nodes FROM cluster_agents"
            " WHERE namespace = $1 GROUP BY agent_id ORDER BY agent_id",
            self._namespace,
        )
        return {row["agent_id"]: list(row["nodes"]) for row in rows}

    async def live_nodes(self) -> list[str]:
        pool = await self._get_pool()
        rows = await pool.fetch(
            "SELECT node_id FROM cluster_nodes WHERE namespace = $1"
            " AND heartbeat_at >= now() - make_interval(secs => $2::float8) ORDER BY node_id",
            self._namespace,
            self._ttl,
        )
        return [row["node_id"] for row in rows]

    async def join(self, channel: str, info: ClientInfo) -> None:
        pool = await self._get_pool()
        await pool.execute(
            "INSERT INTO cluster_clients (namespace, channel, client_id, node_id, info)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (namespace, channel, client_id)"
            " DO UPDATE SET info = EXCLUDED.info, node_id = EXCLUDED.node_id",
            self._namespace,
            channel,
            info.client_id,
            self._node,
            orjson.dumps(info.as_dict()).decode(),
        )

    async def leave(self, channel: str, client_id: str) -> None:
        pool = await self._get_pool()
        await pool.execute(
            "DELETE FROM cluster_clients WHERE namespace = $1 AND channel = $2 AND client_id = $3",
            self._namespace,
            channel,
            client_id,
        )

    async def members(self, channel: str) -> dict[str, ClientInfo]:
        pool = await self._get_pool()
        rows = await pool.fetch(
            "SELECT client_id, info FROM cluster_clients WHERE namespace = $1 AND channel = $2",
            self._namespace,
            channel,
        )
        members = {}
        for row in rows:
            info = orjson.loads(row["info"])
            members[row["client_id"]] = ClientInfo(
                info["client_id"],
                info["agent_id"],
                info["session_id"],
                info["connected_at"],
                info["node_id"],
            )
        return members

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
