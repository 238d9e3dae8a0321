"""The claim index in claim order: `(status, priority DESC, created_at, id)`.

0004's `(status, priority, created_at)` could serve `ORDER BY priority DESC, created_at, id`
only in part (SQLite: "USE TEMP B-TREE FOR RIGHT PART OF ORDER BY"), so every claim read and
sorted every pending task of the top priority before it took one. In claim order the pick
walks the index and stops at the first ready task.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_tasks_claim", "tasks")
    op.create_index(
        "ix_tasks_claim",
        "tasks",
        ["status", sa.text("priority DESC"), "created_at", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_claim", "tasks")
    op.create_index("ix_tasks_claim", "tasks", ["status", "priority", "created_at"])
