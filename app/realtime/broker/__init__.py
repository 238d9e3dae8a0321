"""Brokers carry publications between nodes; the hub delivers them to local connections.

`create_broker(settings)` picks one by configuration and imports it lazily, so the Redis client
is only needed when REDIS_URL is used.
"""

from __future__ import annotations

from app.core.config import Settings
from app.realtime.broker.base import Broker, BrokerHandler
from app.realtime.history import HistoryPolicies


def create_broker(settings: Settings, node_id: str) -> Broker:
    kind = settings.broker_kind
    policies = HistoryPolicies(settings)
    if kind == "memory":
        from app.realtime.broker.memory import MemoryBroker

        return MemoryBroker(node_id, policies)
    raise ValueError(f"broker {kind!r} is not available in this build")


__all__ = ["Broker", "BrokerHandler", "create_broker"]
