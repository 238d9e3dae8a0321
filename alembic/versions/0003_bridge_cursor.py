"""The bridge's persisted cursor (app/db/models.py `BridgeCursor`).

A bridge records the last outbox id it published after every batch; on start, and when a node
becomes its cluster's bridge leader, it resumes from there instead of the outbox's head, so
events written just before a crash are still delivered (docs/delivery.md).

Revision ID: 0003
Revises: 0002
Create Date: 2026-02-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bridge_cursor",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_bridge_cursor")),
    )


def downgrade() -> None:
    op.drop_table("bridge_cursor")
