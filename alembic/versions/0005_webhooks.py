"""Webhooks: endpoints, the outbox of deliveries, their attempts, the dispatcher's cursor.

- webhook_endpoints: URL, event and channel filters, secrets (current and rotated-out), the
  lease of the node delivering to it now.
- webhook_deliveries: one row per (event, endpoint): the exact body and where its retries
  stand; taken in id order per endpoint (app/webhooks/delivery.py).
- webhook_attempts: one row per POST, for GET /api/webhooks/{id}/deliveries.
- webhook_cursor: how far the outbox (`events`) has been fanned out into deliveries. Created
  here at today's head: events written before webhooks existed are owed to no endpoint.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _serial() -> sa.types.TypeEngine[int]:
    # SQLite auto-increments only INTEGER PRIMARY KEY (with AUTOINCREMENT: never reused).
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _stamp(name: str) -> sa.Column[object]:
    return sa.Column(name, _time(), nullable=False, server_default=sa.func.now())


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("events", _json(), nullable=False),
        sa.Column("channels", _json(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("disabled_at", _time(), nullable=True),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("previous_secret", sa.String(100), nullable=True),
        sa.Column("previous_secret_expires_at", _time(), nullable=True),
        sa.Column("start_after", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("failing_since", _time(), nullable=True),
        sa.Column("lease_token", sa.String(64), nullable=True),
        sa.Column("lease_expires_at", _time(), nullable=True),
        _stamp("created_at"),
        _stamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    )
    op.create_index(
        "ix_webhook_endpoints_created_at", "webhook_endpoints", ["created_at", "id"]
    )

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", _serial(), autoincrement=True, nullable=False),
        sa.Column("endpoint_id", sa.String(128), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default=sa.text("'pending'")),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("attempt_limit", sa.Integer(), nullable=True),
        _stamp("next_attempt_at"),
        _stamp("created_at"),
        _stamp("updated_at"),
        sa.CheckConstraint(
            "state IN ('pending', 'succeeded', 'failed')", name=op.f("ck_webhook_deliveries_state")
        ),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.id"],
            name=op.f("fk_webhook_deliveries_endpoint_id_webhook_endpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_webhook_deliveries_queue", "webhook_deliveries", ["endpoint_id", "state", "id"]
    )
    op.create_index(
        "ix_webhook_deliveries_finished", "webhook_deliveries", ["state", "updated_at"]
    )

    op.create_table(
        "webhook_attempts",
        sa.Column("id", _serial(), autoincrement=True, nullable=False),
        sa.Column("delivery_id", _serial(), nullable=False),
        sa.Column("endpoint_id", sa.String(128), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        _stamp("attempted_at"),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("node_id", sa.String(128), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_deliveries.id"],
            name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.id"],
            name=op.f("fk_webhook_attempts_endpoint_id_webhook_endpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_webhook_attempts_endpoint_id", "webhook_attempts", ["endpoint_id", "id"]
    )
    op.create_index(
        "ix_webhook_attempts_delivery_id", "webhook_attempts", ["delivery_id", "id"]
    )

    op.create_table(
        "webhook_cursor",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        _stamp("updated_at"),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_webhook_cursor")),
    )
    op.execute(
        "INSERT INTO webhook_cursor (name, last_id, updated_at) "
        "SELECT 'outbox', COALESCE(MAX(id), 0), CURRENT_TIMESTAMP FROM events"
    )


def downgrade() -> None:
    for table in ("webhook_cursor", "webhook_attempts", "webhook_deliveries", "webhook_endpoints"):
        op.drop_table(table)
