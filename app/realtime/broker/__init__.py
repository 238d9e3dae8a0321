"""Brokers carry publications between nodes; the hub delivers them to local connections.

`create_broker(settings, node_id)` picks one by BROKER (auto = redis when REDIS_URL is set,
else memory) and imports it lazily, so the Redis client is only loaded when it is used.

    memory     one process, the embedded default                       (memory.py)
    redis      Redis pub/sub + streams, many nodes                     (redis.py)
               over several Redis (REDIS_SHARDS): channels hashed      (redis_sharded.py)
               over a Redis Cluster: sharded pub/sub                   (redis_cluster.py)
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
        prefix = settings.broker_prefix
        if settings.redis_cluster:
            from app.realtime.broker.redis_cluster import RedisClusterBroker

            return RedisClusterBroker(node_id, policies, settings.redis_cluster, prefix)
        urls = settings.redis_shard_urls
        if not urls:
            raise ValueError("BROKER=redis needs REDIS_URL (or REDIS_SHARDS, REDIS_CLUSTER_URL)")
        from app.realtime.broker.redis import RedisBroker

        if len(urls) == 1:
            return RedisBroker(node_id, policies, urls[0], prefix)
        from app.realtime.broker.redis_sharded import ShardedRedisBroker

        return ShardedRedisBroker.over([RedisBroker(node_id, policies, u, prefix) for u in urls])
    if kind == "postgres":
        if not settings.is_postgres:
            raise ValueError("BROKER=postgres needs a postgresql:// DATABASE_URL")
        from app.realtime.broker.postgres import PostgresBroker

        return PostgresBroker(node_id, policies, settings.database_url, settings.broker_prefix)
    raise ValueError(f"unknown broker {kind!r}")


__all__ = ["Broker", "BrokerHandler", "create_broker"]
