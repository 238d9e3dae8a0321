"""PostgreSQL: the outbox triggers fire at COMMIT (deferred constraint triggers).

`cm_emit_event` takes the outbox writers' transaction-scoped advisory lock before it takes an
event id, so ids become visible in id order (app/bridge.py). An immediate trigger took that
lock at the first event-writing statement and held it to the end of the transaction: every
later statement of the transaction, and each of its round trips to the client, ran inside it,
and concurrent writers (the shared transaction's four, app/db/shared_transaction.py) committed
one at a time. Deferred to COMMIT, the triggers take the lock once the transaction's last
statement is done and hold it for the inserts into `events` and the commit itself.

Nothing else changes. A deferred row trigger still sees OLD and NEW as its statement left
them (two updates of one row in a transaction are two events with their own data), and the
events of a transaction still take consecutive ids in statement order. The lock is now taken
after every row lock of the transaction, never before one, so it can no longer be one end of
a deadlock. SQLite's triggers are unchanged: it has one writer at a time.

The cost: PostgreSQL queues a deferred trigger's events in the backend's memory until COMMIT
(an immediate row trigger's, until the end of its statement), so one transaction that writes
a million rows (a bulk import by psql) holds a million queued events, tens of MB, until then.

A later migration's trigger that feeds the outbox is written the same way:
``CREATE CONSTRAINT TRIGGER … AFTER … ON … DEFERRABLE INITIALLY DEFERRED FOR EACH ROW …``.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, trigger) of every PostgreSQL trigger that calls cm_emit_event (0001 and 0004).
EVENT_TRIGGERS = [
    ("tasks", "tasks_event_insert"),
    ("tasks", "tasks_event_update"),
    ("subtasks", "subtasks_event_insert"),
    ("subtasks", "subtasks_event_update"),
    ("messages", "messages_event_insert"),
    ("messages", "messages_event_read"),
    ("messages", "messages_event_expired"),
    ("reservations", "reservations_event_insert"),
    ("reservations", "reservations_event_released"),
    ("reservations", "reservations_event_expired"),
]

_PLAIN = "CREATE TRIGGER "
_CONSTRAINT = "CREATE CONSTRAINT TRIGGER "
_ROW = " FOR EACH ROW"
_DEFERRED = " DEFERRABLE INITIALLY DEFERRED"


def _definition(table: str, name: str) -> str:
    row = op.get_bind().execute(
        text(
            "SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t"
            " WHERE t.tgrelid = CAST(:table AS regclass) AND t.tgname = :name"
        ),
        {"table": table, "name": name},
    )
    definition = row.scalar_one()
    assert isinstance(definition, str)
    return definition


def _rewrite(definition: str, deferred: bool) -> str:
    """pg_get_triggerdef's text as the other kind of trigger (its WHEN and function kept)."""
    if deferred:
        assert definition.startswith(_PLAIN) and _ROW in definition, definition
        definition = definition.replace(_ROW, _DEFERRED + _ROW, 1)
        return _CONSTRAINT + definition[len(_PLAIN) :]
    assert definition.startswith(_CONSTRAINT) and _DEFERRED + _ROW in definition, definition
    definition = definition.replace(_DEFERRED + _ROW, _ROW, 1)
    return _PLAIN + definition[len(_CONSTRAINT) :]


def _recreate(deferred: bool) -> None:
    for table, name in EVENT_TRIGGERS:
        statement = _rewrite(_definition(table, name), deferred)
        op.execute(f"DROP TRIGGER {name} ON {table}")
        op.execute(statement)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _recreate(deferred=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _recreate(deferred=False)
