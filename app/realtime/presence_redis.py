"""Cluster presence in Redis: node heartbeats, agents per node, channel presence (cluster.py).

Keys, under BROKER_PREFIX::

    cm:nodes                 zset   node id → last heartbeat (ms, Redis clock)
    cm:online                set    agents held by at least one node
    cm:agent:<agent>         set    nodes holding a connection of that agent
    cm:node:<node>:agents    set    agents that node holds
    cm:presence:<channel>    hash   client id → ClientInfo JSON
    cm:node:<node>:clients   set    "<channel>\\n<client id>" entries that node added
    cm:sweep                 string the sweep lock (SET NX PX)

Each change is one Lua script, so "first anywhere" and "last anywhere" are decided atomically
against every other node, and a dead node's agents are removed — and reported — exactly once.
Time comes from Redis (`TIME`), so the nodes' clocks never have to agree.

Presence is not sharded. Its scripts touch keys they compute from the prefix (a dead node's
agents and channel entries, in one atomic sweep), which needs every presence key on one
server; and it is small and slow-moving — an entry per connection and subscription, written
when they open and close, never per publication — so one server carries it for any cluster
the broker's shards carry. With REDIS_SHARDS it lives on the first shard (its outage stops
heartbeats and presence changes, not publications on the other shards); on Redis Cluster
every presence key carries the hash tag ``{cm}`` (the prefix in braces), so all of them are
in one slot, on one master, and the same scripts run there (docs/scaling.md).
"""

from __future__ import annotations

from typing import Any

import orjson

from app.realtime.presence import ClientInfo

_NOW = "local t = redis.call('time') local now = t[1] * 1000 + math.floor(t[2] / 1000)"

HEARTBEAT_SCRIPT = f"""
{_NOW}
return redis.call("zadd", KEYS[1], now, ARGV[1])
"""

# KEYS: agent's nodes, node's agents, online set. ARGV: node, agent.
AGENT_ONLINE_SCRIPT = """
redis.call("sadd", KEYS[1], ARGV[1])
redis.call("sadd", KEYS[2], ARGV[2])
if redis.call("scard", KEYS[1]) == 1 then
  redis.call("sadd", KEYS[3], ARGV[2])
  return 1
end
return 0
"""

# Last anywhere only if this node was still listed: a node swept while stalled has already
# been reported gone and must not report it twice.
AGENT_OFFLINE_SCRIPT = """
local removed = redis.call("srem", KEYS[1], ARGV[1])
redis.call("srem", KEYS[2], ARGV[2])
if removed == 1 and redis.call("scard", KEYS[1]) == 0 then
  redis.call("srem", KEYS[3], ARGV[2])
  return 1
end
return 0
"""

# KEYS: nodes zset. ARGV: prefix, node TTL ms, one node to remove ("" = every dead node).
SWEEP_SCRIPT = f"""
{_NOW}
local prefix = ARGV[1]
local dead
if ARGV[3] ~= "" then
  dead = {{ARGV[3]}}
else
  dead = redis.call("zrangebyscore", KEYS[1], "-inf", now - tonumber(ARGV[2]), "LIMIT", 0, 100)
end
local gone = {{}}
for _, node in ipairs(dead) do
  local agents_key = prefix .. ":node:" .. node .. ":agents"
  for _, agent in ipairs(redis.call("smembers", agents_key)) do
    local holders = prefix .. ":agent:" .. agent
    if redis.call("srem", holders, node) == 1 and redis.call("scard", holders) == 0 then
      redis.call("srem", prefix .. ":online", agent)
      table.insert(gone, agent)
      table.insert(gone, node)
    end
  end
  redis.call("del", agents_key)
  local clients_key = prefix .. ":node:" .. node .. ":clients"
  for _, entry in ipairs(redis.call("smembers", clients_key)) do
    local cut = string.find(entry, "\\n", 1, true)
    redis.call("hdel", prefix .. ":presence:" .. string.sub(entry, 1, cut - 1),
               string.sub(entry, cut + 1))
  end
  redis.call("del", clients_key)
  redis.call("zrem", KEYS[1], node)
end
return gone
"""

# KEYS: the channel's presence hash, the node's clients set. ARGV: client id, info, entry.
JOIN_SCRIPT = """
redis.call("hset", KEYS[1], ARGV[1], ARGV[2])
return redis.call("sadd", KEYS[2], ARGV[3])
"""

LEAVE_SCRIPT = """
redis.call("hdel", KEYS[1], ARGV[1])
return redis.call("srem", KEYS[2], ARGV[2])
"""

# KEYS: the online set. ARGV: prefix. Returns agent, its nodes (a list), agent, ...
ONLINE_AGENTS_SCRIPT = """
local out = {}
for _, agent in ipairs(redis.call("smembers", KEYS[1])) do
  table.insert(out, agent)
  table.insert(out, redis.call("smembers", ARGV[1] .. ":agent:" .. agent))
end
return out
"""

LIVE_NODES_SCRIPT = f"""
{_NOW}
return redis.call("zrangebyscore", KEYS[1], now - tonumber(ARGV[1]), "+inf")
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisClusterStore:
    """`ClusterStore` and `PresenceStore` over Redis (see the module docstring)."""

    def __init__(
        self, url: str, prefix: str, node_id: str, node_ttl: float, cluster: bool = False
    ) -> None:
        self._client: Any
        if cluster:
            from app.realtime.broker.redis_cluster import cluster_client

            self._client = cluster_client(url)
            prefix = f"{{{prefix}}}"  # one hash slot for every presence key
        else:
            from app.realtime.broker.redis import command_client

            self._client = command_client(url)
        self._prefix = prefix
        self._node = node_id
        self._ttl_ms = int(node_ttl * 1000)
        self._nodes_key = f"{prefix}:nodes"
        self._online_key = f"{prefix}:online"
        self._node_agents = f"{prefix}:node:{node_id}:agents"
        self._node_clients = f"{prefix}:node:{node_id}:clients"
        self._heartbeat = self._client.register_script(HEARTBEAT_SCRIPT)
        self._online = self._client.register_script(AGENT_ONLINE_SCRIPT)
        self._offline = self._client.register_script(AGENT_OFFLINE_SCRIPT)
        self._sweep = self._client.register_script(SWEEP_SCRIPT)
        self._live = self._client.register_script(LIVE_NODES_SCRIPT)
        self._join = self._client.register_script(JOIN_SCRIPT)
        self._leave = self._client.register_script(LEAVE_SCRIPT)
        self._online_agents = self._client.register_script(ONLINE_AGENTS_SCRIPT)

    def _agent_key(self, agent_id: str) -> str:
        return f"{self._prefix}:agent:{agent_id}"

    def _presence_key(self, channel: str) -> str:
        return f"{self._prefix}:presence:{channel}"

    async def heartbeat(self) -> bool:
        return bool(await self._heartbeat(keys=[self._nodes_key], args=[self._node]))

    async def agent_online(self, agent_id: str) -> bool:
        keys = [self._agent_key(agent_id), self._node_agents, self._online_key]
        return bool(await self._online(keys=keys, args=[self._node, agent_id]))

    async def agent_offline(self, agent_id: str) -> bool:
        keys = [self._agent_key(agent_id), self._node_agents, self._online_key]
        return bool(await self._offline(keys=keys, args=[self._node, agent_id]))

    async def sweep(self, node_id: str | None = None) -> list[tuple[str, str]]:
        flat = await self._sweep(
            keys=[self._nodes_key], args=[self._prefix, self._ttl_ms, node_id or ""]
        )
        return [(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)]

    async def try_lock(self, seconds: float) -> bool:
        key = f"{self._prefix}:sweep"
        return bool(await self._client.set(key, self._node, nx=True, px=int(seconds * 1000)))

    async def online_agents(self) -> dict[str, list[str]]:
        flat = await self._online_agents(keys=[self._online_key], args=[self._prefix])
        agents = {
            _text(flat[i]): sorted(_text(n) for n in flat[i + 1]) for i in range(0, len(flat), 2)
        }
        return {agent: nodes for agent, nodes in sorted(agents.items()) if nodes}

    async def live_nodes(self) -> list[str]:
        nodes = await self._live(keys=[self._nodes_key], args=[self._ttl_ms])
        return [n.decode() for n in nodes]

    async def join(self, channel: str, info: ClientInfo) -> None:
        await self._join(
            keys=[self._presence_key(channel), self._node_clients],
            args=[info.client_id, orjson.dumps(info.as_dict()), f"{channel}\n{info.client_id}"],
        )

    async def leave(self, channel: str, client_id: str) -> None:
        await self._leave(
            keys=[self._presence_key(channel), self._node_clients],
            args=[client_id, f"{channel}\n{client_id}"],
        )

    async def members(self, channel: str) -> dict[str, ClientInfo]:
        raw = await self._client.hgetall(self._presence_key(channel))
        members = {}
        for client_id, value in raw.items():
            info = orjson.loads(value)
            members[_text(client_id)] = ClientInfo(
                info["client_id"],
                info["agent_id"],
                info["session_id"],
                info["connected_at"],
                info["node_id"],
            )
        return members

    async def close(self) -> None:
        await self._client.aclose()
