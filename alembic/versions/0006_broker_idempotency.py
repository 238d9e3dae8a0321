"""Idempotency keys of client publishes on the PostgreSQL broker (app/db/broker_models.py).

`broker_idempotency` holds, per (namespace, channel, key), the offset and epoch of the first
publication made with that key, until `expires_at` (the channel kind's history TTL): a repeat
within it is answered with that offset and publishes nothing (app/realtime/broker/postgres.py).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "broker_idempotency",
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("epoch", sa.Text(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "namespace", "channel", "key", name=op.f("pk_broker_idempotency")
        ),
    )
    op.create_index(
        "ix_broker_idempotency_expires_at", "broker_idempotency", ["namespace", "expires_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_broker_idempotency_expires_at", table_name="broker_idempotency")
    op.drop_table("broker_idempotency")
