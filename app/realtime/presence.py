"""Agent presence on this node: which agents have open connections, and heartbeat throttling.

An agent may hold several connections (tabs, workers). `agent.connected` is published when its
first connection opens and `agent.disconnected` when its last one closes. A `ping` from an agent
yields `agent.heartbeat` at most once per HEARTBEAT_INTERVAL seconds per agent.
"""

from __future__ import annotations

import time


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
