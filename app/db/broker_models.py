"""Tables of the PostgreSQL broker and of cluster presence without Redis (migration 0002).

They live beside the application's tables, in a module of their own, because nothing but
`app.realtime.broker.postgres` and `app.realtime.presence_postgres` touches them, through
asyncpg and plain SQL (see those modules for the queries and why). Every row carries the
cluster's `namespace` (BROKER_PREFIX), so clusters — and parallel tests — can share a database.

    broker_streams        one row per channel: its epoch and last offset
    broker_publications   retained publications (history), and the carrier of payloads too
                          large for NOTIFY's 8000 bytes
    broker_idempotency    a publish's idempotency key → the offset it got, until it expires
                          (migration 0006)
    cluster_nodes         one row per live node, its heartbeat
    cluster_agents        which node holds at least one connection of which agent
    cluster_clients       channel presence: who is subscribed where
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, Table, Text, func

from app.db.models import Base

metadata = Base.metadata


def _now_column(name: str) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=False, server_default=func.now())


broker_streams = Table(
    "broker_streams",
    metadata,
    Column("namespace", Text, primary_key=True),
    Column("channel", Text, primary_key=True),
    Column("epoch", Text, nullable=False),
    Column("top_offset", BigInteger, nullable=False, server_default="0"),
    _now_column("updated_at"),
)

broker_publications = Table(
    "broker_publications",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("namespace", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("epoch", Text, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("payload", Text, nullable=False),
    _now_column("created_at"),
    Index("ix_broker_publications_stream", "namespace", "channel", "epoch", "offset", unique=True),
    Index("ix_broker_publications_created_at", "created_at"),
)

broker_idempotency = Table(
    "broker_idempotency",
    metadata,
    Column("namespace", Text, primary_key=True),
    Column("channel", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("epoch", Text, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_broker_idempotency_expires_at", "namespace", "expires_at"),
)

cluster_nodes = Table(
    "cluster_nodes",
    metadata,
    Column("namespace", Text, primary_key=True),
    Column("node_id", Text, primary_key=True),
    _now_column("heartbeat_at"),
)

cluster_agents = Table(
    "cluster_agents",
    metadata,
    Column("namespace", Text, primary_key=True),
    Column("agent_id", Text, primary_key=True),
    Column("node_id", Text, primary_key=True),
    Index("ix_cluster_agents_node", "namespace", "node_id"),
)

cluster_clients = Table(
    "cluster_clients",
    metadata,
    Column("namespace", Text, primary_key=True),
    Column("channel", Text, primary_key=True),
    Column("client_id", Text, primary_key=True),
    Column("node_id", Text, nullable=False),
    Column("info", Text, nullable=False),
    Index("ix_cluster_clients_node", "namespace", "node_id"),
)
