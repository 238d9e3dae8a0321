"""Broker and cluster-presence tables for PostgreSQL-only clusters (app/db/broker_models.py).

Created on every backend so that one schema describes the database; only the PostgreSQL broker
(BROKER=postgres) and its presence store read or write them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _now(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def upgrade() -> None:
    op.create_table(
        "broker_streams",
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("epoch", sa.Text(), nullable=False),
        sa.Column("top_offset", sa.BigInteger(), nullable=False, server_default="0"),
        _now("updated_at"),
        sa.PrimaryKeyConstraint("namespace", "channel", name=op.f("pk_broker_streams")),
    )
    op.create_table(
        "broker_publications",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("epoch", sa.Text(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        _now("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_broker_publications")),
    )
    op.create_index(
        "ix_broker_publications_stream",
        "broker_publications",
        ["namespace", "channel", "epoch", "offset"],
        unique=True,
    )
    op.create_index("ix_broker_publications_created_at", "broker_publications", ["created_at"])

    op.create_table(
        "cluster_nodes",
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("node_id", sa.Text(), nullable=False),
        _now("heartbeat_at"),
        sa.PrimaryKeyConstraint("namespace", "node_id", name=op.f("pk_cluster_nodes")),
    )
    op.create_table(
        "cluster_agents",
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("agent_id", sa.Text(), nullable=False),
        sa.Column("node_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "agent_id", "node_id", name=op.f("pk_cluster_agents")),
    )
    op.create_index("ix_cluster_agents_node", "cluster_agents", ["namespace", "node_id"])
    op.create_table(
        "cluster_clients",
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("client_id", sa.Text(), nullable=False),
        sa.Column("node_id", sa.Text(), nullable=False),
        sa.Column("info", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "namespace", "channel", "client_id", name=op.f("pk_cluster_clients")
        ),
    )
    op.create_index("ix_cluster_clients_node", "cluster_clients", ["namespace", "node_id"])


def downgrade() -> None:
    op.drop_index("ix_cluster_clients_node", table_name="cluster_clients")
    op.drop_table("cluster_clients")
    op.drop_index("ix_cluster_agents_node", table_name="cluster_agents")
    op.drop_table("cluster_agents")
    op.drop_table("cluster_nodes")
    op.drop_index("ix_broker_publications_created_at", table_name="broker_publications")
    op.drop_index("ix_broker_publications_stream", table_name="broker_publications")
    op.drop_table("broker_publications")
    op.drop_table("broker_streams")
