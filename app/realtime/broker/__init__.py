"""Brokers carry publications between nodes; the hub delivers them to local connections.

`create_broker(settings, node_id)` picks one by BROKER (auto = redis when REDIS_URL is set,
else memory) and imports it lazily, so the Redis client is only loaded when it is used.

    memory     one process, the embedded default                       (memory.py)
    redis      Redis pub/sub + streams, many nodes                     (redis.py)
    postgres   PostgreSQL LISTEN/NOTIFY + tables, many nodes, no Redis (postgres.py)
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
    if kind == "redis":
        if not settings.redis_url:
            raise ValueError("BROKER=redis needs REDIS_URL")
        from app.realtime.broker.redis import RedisBroker

        return RedisBroker(node_id, policies, settings.redis_url, settings.broker_prefix)
    if kind == "postgres":
        if not settings.is_postgres:
            raise ValueError("BROKER=postgres needs a postgresql:// DATABASE_URL")
        from app.realtime.broker.postgres import PostgresBroker

        return PostgresBroker(node_id, policies, settings.database_url, settings.broker_prefix)
    raise ValueError(f"unknown broker {kind!r}")


__all__ = ["Broker", "BrokerHandler", "create_broker"]
