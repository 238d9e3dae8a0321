"""Presence: which agents are connected (agent.* events) and who is subscribed to a channel.

`AgentPresence` counts each agent's connections on this node and throttles heartbeats;
`PresenceStore` answers the `presence` and `presence_stats` requests for a channel.

An agent may hold several connections (tabs, workers). `agent.connected` is published when its
first connection opens and `agent.disconnected` when its last one closes. A `ping` from an agent
yields `agent.heartbeat` at most once per HEARTBEAT_INTERVAL seconds per agent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol


class AgentPresence:
    def __init__(self, heartbeat_interval: float) -> None:
        self._heartbeat_interval = heartbeat_interval
        self._connections: dict[str, int] = {}
        self._last_heartbeat: dict[str, float] = {}

    def add(self, agent_id: str) -> bool:
        """Count a connection; True when it is the agent's first."""
        count = self._connections.get(agent_id, 0) + 1
        self._connections[agent_id] = count
        return count == 1

    def remove(self, agent_id: str) -> bool:
        """Uncount a connection; True when it was the agent's last."""
        count = self._connections.get(agent_id, 0) - 1
        if count > 0:
            self._connections[agent_id] = count
            return False
        self._connections.pop(agent_id, None)
        self._last_heartbeat.pop(agent_id, None)
        return True

    def heartbeat_due(self, agent_id: str) -> bool:
        """True (and restart the interval) when this agent's heartbeat should be published."""
        now = time.monotonic()
        last = self._last_heartbeat.get(agent_id)
        if last is not None and now - last < self._heartbeat_interval:
            return False
        self._last_heartbeat[agent_id] = now
        return True

    def online(self) -> dict[str, int]:
        """Agent id → number of open connections on this node."""
        return dict(self._connections)


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who is subscribed to a channel: one entry per connection."""

    client_id: str
    agent_id: str | None
    session_id: str | None
    connected_at: float
    node_id: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "agent_id": self.agent_id,
            "session_id": self.session_id,
            "connected_at": self.connected_at,
            "node_id": self.node_id,
        }


class PresenceStore(Protocol):
    """Channel presence: who is subscribed where, across every node of the cluster."""

    async def join(self, channel: str, info: ClientInfo) -> None: ...

    async def leave(self, channel: str, client_id: str) -> None: ...

    async def members(self, channel: str) -> dict[str, ClientInfo]: ...

    async def close(self) -> None: ...


class MemoryPresenceStore:
    """Presence of the single-node embedded default."""

    def __init__(self) -> None:
        self._channels: dict[str, dict[str, ClientInfo]] = {}

    async def join(self, channel: str, info: ClientInfo) -> None:
        self._channels.setdefault(channel, {})[info.client_id] = info

    async def leave(self, channel: str, client_id: str) -> None:
        members = self._channels.get(channel)
        if members is not None:
            members.pop(client_id, None)
            if not members:
                del self._channels[channel]

    async def members(self, channel: str) -> dict[str, ClientInfo]:
        return dict(self._channels.get(channel, {}))

    async def close(self) -> None:
        self._channels.clear()


def presence_stats(members: dict[str, ClientInfo]) -> dict[str, int]:
    """Counts for `presence_stats`: connections and distinct agents."""
    agents = {info.agent_id for info in members.values() if info.agent_id is not None}
    return {"num_clients": len(members), "num_agents": len(agents)}
