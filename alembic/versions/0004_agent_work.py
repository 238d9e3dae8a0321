"""Work for agents that hold no socket: claims with leases, dependencies, the inbox, path
reservations and idempotency keys (app/domain/claims.py, inbox.py, reservations.py).

- agents gain capabilities, summary and activity (what they say of themselves).
- tasks gain capabilities, attempts, max_attempts, ready_at and the lease columns; the task
  trigger names the event after what changed: ``task.claimed`` (a new fence),
  ``task.lease_expired`` / ``task.released`` (a lease ended that way), ``task.ready`` (the last
  dependency completed), else as before. A lease renewal (only `lease_expires_at` changes)
  writes no event: heartbeats renew leases all the time.
- task_dependencies: which task waits for which.
- messages gain seq (per recipient, gapless), thread_id and reply_to; agent_inboxes keeps each
  agent's last seq and acknowledged position. The API gives the seq in the inserting
  transaction; a trigger gives one to a message written by raw SQL.
- reservations, with triggers writing reservation.created / released / expired.
- idempotency_keys: the first answer to a POST, replayed to its retries.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _initial() -> ModuleType:
    """Revision 0001, for its trigger builders (it never changes, so neither does this)."""
    path = Path(__file__).with_name("0001_initial_schema.py")
    spec = importlib.util.spec_from_file_location("cm_migration_0001", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


base = _initial()

TASK_FIELDS = [
    *base.TASK_FIELDS,
    ("capabilities", "capabilities", "json"),
    ("attempts", "attempts", "raw"),
    ("max_attempts", "max_attempts", "raw"),
    ("ready_at", "ready_at", "time"),
    ("lease_outcome", "lease_outcome", "raw"),
]
# A change of any of these is an event; lease_expires_at alone (a renewal) is not.
TASK_EVENT_COLUMNS = [
    *base.TASK_COLUMNS,
    "capabilities",
    "attempts",
    "max_attempts",
    "ready_at",
    "lease_id",
    "lease_agent_id",
    "lease_fence",
    "lease_seconds",
    "lease_outcome",
]
MESSAGE_FIELDS = [
    *base.MESSAGE_FIELDS,
    ("seq", "seq", "raw"),
    ("thread_id", "thread_id", "raw"),
    ("reply_to", "reply_to", "raw"),
]
RESERVATION_FIELDS = [
    ("reservation_id", "id", "raw"),
    ("agent_id", "agent_id", "raw"),
    ("paths", "paths", "json"),
    ("reason", "reason", "raw"),
    ("created_at", "created_at", "time"),
    ("expires_at", "expires_at", "time"),
    ("released_at", "released_at", "time"),
    ("expired_at", "expired_at", "time"),
]


def _task_event(update: bool, distinct: str) -> list[tuple[str, str]]:
    """(condition, event) in order; `distinct` is the dialect's IS DISTINCT FROM."""
    if not update:
        return []
    ended = "OLD.lease_id IS NOT NULL AND NEW.lease_id IS NULL AND NEW.lease_outcome = "
    return [
        (f"NEW.lease_fence {distinct} OLD.lease_fence", "task.claimed"),
        (ended + "'expired'", "task.lease_expired"),
        (ended + "'released'", "task.released"),
        (f"NEW.status {distinct} OLD.status AND NEW.status = 'completed'", "task.completed"),
        (f"NEW.status {distinct} OLD.status AND NEW.status = 'failed'", "task.failed"),
        (
            "OLD.ready_at IS NULL AND NEW.ready_at IS NOT NULL AND NEW.status = 'pending'",
            "task.ready",
        ),
    ]


def _case(pairs: list[tuple[str, str]], default: str) -> str:
    whens = " ".join(f"WHEN {condition} THEN '{event}'" for condition, event in pairs)
    return f"CASE {whens} ELSE '{default}' END" if pairs else f"'{default}'"


# --- SQLite ------------------------------------------------------------------------------------


def _sqlite_lease() -> str:
    return (
        "json(CASE WHEN NEW.lease_id IS NULL THEN NULL ELSE json_object("
        "'id', NEW.lease_id, 'agent_id', NEW.lease_agent_id, 'fence', NEW.lease_fence, "
        f"'expires_at', {base._sqlite_value('lease_expires_at', 'time')}) END)"
    )


def _sqlite_task(update: bool) -> dict[str, str]:
    agent = "COALESCE(NEW.agent_id, NEW.lease_agent_id" + (
        ", OLD.lease_agent_id)" if update else ")"
    )
    extra = {"previous_status": "OLD.status" if update else "NULL", "lease": _sqlite_lease()}
    return {
        "event": _case(_task_event(update, "IS NOT"), "task.updated" if update else "task.created"),
        "entity": "'task'",
        "entity_id": "NEW.id",
        "session_id": "NEW.session_id",
        "agent_id": agent,
        "data": base._sqlite_object(TASK_FIELDS, extra),
        "created_at": base.SQLITE_NOW,
    }


def _sqlite_message(event: str) -> dict[str, str]:
    return {
        "event": f"'{event}'",
        "entity": "'message'",
        "entity_id": "NEW.id",
        "session_id": "NEW.session_id",
        "agent_id": "NEW.to_agent",
        "data": base._sqlite_object(MESSAGE_FIELDS, {}),
        "created_at": base.SQLITE_NOW,
    }


def _sqlite_reservation(event: str) -> dict[str, str]:
    exclusive = "json(CASE WHEN NEW.exclusive THEN 'true' ELSE 'false' END)"
    return {
        "event": f"'{event}'",
        "entity": "'reservation'",
        "entity_id": "NEW.id",
        "session_id": "NULL",
        "agent_id": "NEW.agent_id",
        "data": base._sqlite_object(RESERVATION_FIELDS, {"exclusive": exclusive}),
        "created_at": base.SQLITE_NOW,
    }


SQLITE_REPLACED = [
    "tasks_event_insert",
    "tasks_event_update",
    "messages_event_insert",
    "messages_event_read",
    "messages_event_expired",
]


def _sqlite_triggers() -> list[str]:
    trigger = base._sqlite_trigger
    return [
        trigger("tasks_event_insert", "INSERT", "tasks", None, _sqlite_task(False)),
        trigger(
            "tasks_event_update",
            "UPDATE",
            "tasks",
            base._sqlite_changed(TASK_EVENT_COLUMNS),
            _sqlite_task(True),
        ),
        trigger(
            "messages_event_insert", "INSERT", "messages", None, _sqlite_message("message.new")
        ),
        trigger(
            "messages_event_read",
            "UPDATE",
            "messages",
            "OLD.read_at IS NULL AND NEW.read_at IS NOT NULL",
            _sqlite_message("message.read"),
        ),
        trigger(
            "messages_event_expired",
            "UPDATE",
            "messages",
            "OLD.expired_at IS NULL AND NEW.expired_at IS NOT NULL",
            _sqlite_message("message.expired"),
        ),
        trigger(
            "reservations_event_insert",
            "INSERT",
            "reservations",
            None,
            _sqlite_reservation("reservation.created"),
        ),
        trigger(
            "reservations_event_released",
            "UPDATE",
            "reservations",
            "OLD.released_at IS NULL AND NEW.released_at IS NOT NULL",
            _sqlite_reservation("reservation.released"),
        ),
        trigger(
            "reservations_event_expired",
            "UPDATE",
            "reservations",
            "OLD.expired_at IS NULL AND NEW.expired_at IS NOT NULL",
            _sqlite_reservation("reservation.expired"),
        ),
        # A message inserted without a seq (raw SQL) takes the recipient's next one.
        "CREATE TRIGGER messages_seq AFTER INSERT ON messages FOR EACH ROW "
        "WHEN NEW.seq IS NULL BEGIN "
        "INSERT INTO agent_inboxes (agent_id, last_seq, acked_seq, updated_at) "
        f"VALUES (NEW.to_agent, 1, 0, {base.SQLITE_NOW}) "
        "ON CONFLICT (agent_id) DO UPDATE SET last_seq = last_seq + 1; "
        "UPDATE messages SET seq = "
        "(SELECT last_seq FROM agent_inboxes WHERE agent_id = NEW.to_agent) "
        "WHERE id = NEW.id; END",
    ]


SQLITE_NEW = [
    "reservations_event_insert",
    "reservations_event_released",
    "reservations_event_expired",
    "messages_seq",
]


# --- PostgreSQL --------------------------------------------------------------------------------


def _pg_lease() -> str:
    return (
        "CASE WHEN NEW.lease_id IS NULL THEN NULL ELSE jsonb_build_object("
        "'id', NEW.lease_id, 'agent_id', NEW.lease_agent_id, 'fence', NEW.lease_fence, "
        f"'expires_at', {base._pg_value('lease_expires_at', 'time')}) END"
    )


def _pg_statements(task_fields: list[tuple[str, str, str]], with_agent_work: bool) -> list[str]:
    """The task and message functions (with or without this revision's columns)."""
    if with_agent_work:
        events = _task_event(True, "IS DISTINCT FROM")
        update_event = _case(events, "task.updated")
        agent = "COALESCE(NEW.agent_id, NEW.lease_agent_id, old_holder)"
        extra = {"previous_status": "previous", "lease": _pg_lease()}
        message_fields = MESSAGE_FIELDS
    else:
        update_event = None
        agent = "NEW.agent_id"
        extra = {"previous_status": "previous"}
        message_fields = base.MESSAGE_FIELDS
    status_event = (
        f"""
    IF TG_OP = 'INSERT' THEN
      ev := 'task.created';
    ELSE
      ev := {update_event};
      previous := OLD.status;
      old_holder := OLD.lease_agent_id;
    END IF;"""
        if update_event is not None
        else base._pg_status_event("task")
    )
    task_fn = f"""
CREATE OR REPLACE FUNCTION cm_task_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  ev text;
  previous text := NULL;
  old_holder text := NULL;
BEGIN{status_event}
  PERFORM cm_emit_event(ev, 'task', NEW.id, NEW.session_id, {agent},
    {base._pg_object(task_fields, extra)});
  RETURN NULL;
END $$"""
    message_fn = f"""
CREATE OR REPLACE FUNCTION cm_message_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM cm_emit_event(TG_ARGV[0], 'message', NEW.id, NEW.session_id, NEW.to_agent,
    {base._pg_object(message_fields, {})});
  RETURN NULL;
END $$"""
    return [task_fn, message_fn]


def _pg_changed(columns: list[str]) -> str:
    return " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in columns)


def _pg_new() -> list[str]:
    exclusive = "NEW.exclusive"
    reservation_fn = f"""
CREATE FUNCTION cm_reservation_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM cm_emit_event(TG_ARGV[0], 'reservation', NEW.id, NULL, NEW.agent_id,
    {base._pg_object(RESERVATION_FIELDS, {"exclusive": exclusive})});
  RETURN NULL;
END $$"""
    seq_fn = """
CREATE FUNCTION cm_message_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- A message inserted without a seq (raw SQL) takes the recipient's next one. The row lock
  -- on the inbox orders the recipient's inserts: gapless, as a rollback undoes the increment.
  IF NEW.seq IS NULL THEN
    INSERT INTO agent_inboxes AS i (agent_id, last_seq, acked_seq, updated_at)
    VALUES (NEW.to_agent, 1, 0, now())
    ON CONFLICT (agent_id) DO UPDATE SET last_seq = i.last_seq + 1, updated_at = now()
    RETURNING last_seq INTO NEW.seq;
  END IF;
  RETURN NEW;
END $$"""
    return [
        reservation_fn,
        seq_fn,
        "DROP TRIGGER tasks_event_update ON tasks",
        "CREATE TRIGGER tasks_event_update AFTER UPDATE ON tasks FOR EACH ROW "
        f"WHEN ({_pg_changed(TASK_EVENT_COLUMNS)}) EXECUTE FUNCTION cm_task_event()",
        "CREATE TRIGGER messages_seq BEFORE INSERT ON messages "
        "FOR EACH ROW EXECUTE FUNCTION cm_message_seq()",
        "CREATE TRIGGER reservations_event_insert AFTER INSERT ON reservations "
        "FOR EACH ROW EXECUTE FUNCTION cm_reservation_event('reservation.created')",
        "CREATE TRIGGER reservations_event_released AFTER UPDATE ON reservations FOR EACH ROW "
        "WHEN (OLD.released_at IS NULL AND NEW.released_at IS NOT NULL) "
        "EXECUTE FUNCTION cm_reservation_event('reservation.released')",
        "CREATE TRIGGER reservations_event_expired AFTER UPDATE ON reservations FOR EACH ROW "
        "WHEN (OLD.expired_at IS NULL AND NEW.expired_at IS NOT NULL) "
        "EXECUTE FUNCTION cm_reservation_event('reservation.expired')",
    ]


# --- tables ------------------------------------------------------------------------------------


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _added_task_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("capabilities", base._json(), nullable=True),
        sa.Column("max_attempts", sa.Integer(), nullable=False, server_default=sa.text("3")),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("ready_at", _time(), nullable=True),
        sa.Column("lease_id", sa.String(64), nullable=True),
        sa.Column("lease_agent_id", sa.String(128), nullable=True),
        sa.Column("lease_fence", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("lease_expires_at", _time(), nullable=True),
        sa.Column("lease_seconds", sa.Integer(), nullable=True),
        sa.Column("lease_outcome", sa.String(16), nullable=True),
    ]


def _added_message_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("thread_id", sa.String(128), nullable=True),
        sa.Column("reply_to", sa.String(128), nullable=True),
    ]


def _added_agent_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("capabilities", base._json(), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("activity", sa.String(32), nullable=True),
    ]


def upgrade() -> None:
    # Plain ADD / DROP COLUMN (SQLite has both): a batch rebuild would rename tables that
    # other tables' triggers name, which SQLite refuses.
    for column in _added_task_columns():
        op.add_column("tasks", column)
    for column in _added_agent_columns():
        op.add_column("agents", column)
    # Tasks of before this revision had no dependencies: claimable since they were created.
    # Not an event (SQLite's trigger of 0001 does not watch ready_at; PostgreSQL's is paused).
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("ALTER TABLE tasks DISABLE TRIGGER tasks_event_update")
    op.execute("UPDATE tasks SET ready_at = created_at WHERE status = 'pending'")
    if postgres:
        op.execute("ALTER TABLE tasks ENABLE TRIGGER tasks_event_update")
    op.create_index("ix_tasks_claim", "tasks", ["status", "priority", "created_at"])
    op.create_index("ix_tasks_lease_expiry", "tasks", ["lease_expires_at"])
    op.create_index("ix_tasks_lease_agent", "tasks", ["lease_agent_id"])

    op.create_table(
        "task_dependencies",
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("depends_on", sa.String(128), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_task_dependencies_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["depends_on"],
            ["tasks.id"],
            name=op.f("fk_task_dependencies_depends_on_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", "depends_on", name=op.f("pk_task_dependencies")),
    )
    op.create_index("ix_task_dependencies_depends_on", "task_dependencies", ["depends_on"])

    for column in _added_message_columns():
        op.add_column("messages", column)
    op.create_index("ix_messages_inbox", "messages", ["to_agent", "seq"], unique=True)
    op.create_index("ix_messages_thread", "messages", ["thread_id", "created_at"])

    op.create_table(
        "agent_inboxes",
        sa.Column("agent_id", sa.String(128), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("acked_seq", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("updated_at", _time(), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("agent_id", name=op.f("pk_agent_inboxes")),
    )

    op.create_table(
        "reservations",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("agent_id", sa.String(128), nullable=False),
        sa.Column("paths", base._json(), nullable=False),
        sa.Column("exclusive", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", _time(), nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", _time(), nullable=False),
        sa.Column("released_at", _time(), nullable=True),
        sa.Column("expired_at", _time(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reservations")),
    )
    op.create_index(
        "ix_reservations_active", "reservations", ["released_at", "expired_at", "expires_at"]
    )
    op.create_index("ix_reservations_agent_id", "reservations", ["agent_id", "created_at"])

    op.create_table(
        "idempotency_keys",
        sa.Column("scope", sa.String(200), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("content_type", sa.String(100), nullable=True),
        sa.Column("created_at", _time(), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("scope", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])

    if postgres:
        for statement in _pg_statements(TASK_FIELDS, True) + _pg_new():
            op.execute(statement)
    else:
        for name in SQLITE_REPLACED:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        for statement in _sqlite_triggers():
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, table in (
            ("messages_seq", "messages"),
            ("reservations_event_insert", "reservations"),
            ("reservations_event_released", "reservations"),
            ("reservations_event_expired", "reservations"),
            ("tasks_event_update", "tasks"),
        ):
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        op.execute("DROP FUNCTION IF EXISTS cm_message_seq()")
        op.execute("DROP FUNCTION IF EXISTS cm_reservation_event()")
        for statement in _pg_statements(base.TASK_FIELDS, False):
            op.execute(statement)
        op.execute(
            "CREATE TRIGGER tasks_event_update AFTER UPDATE ON tasks "
            "FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION cm_task_event()"
        )
    else:
        for name in SQLITE_REPLACED + SQLITE_NEW:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    for table in ("idempotency_keys", "reservations", "agent_inboxes", "task_dependencies"):
        op.drop_table(table)
    op.drop_index("ix_messages_thread", "messages")
    op.drop_index("ix_messages_inbox", "messages")
    for column in _added_message_columns():
        op.drop_column("messages", column.name)
    for index in ("ix_tasks_lease_agent", "ix_tasks_lease_expiry", "ix_tasks_claim"):
        op.drop_index(index, "tasks")
    for column in _added_task_columns():
        op.drop_column("tasks", column.name)
    for column in _added_agent_columns():
        op.drop_column("agents", column.name)
    if op.get_bind().dialect.name != "postgresql":
        for statement in base._sqlite_triggers():
            if statement.split()[2] in SQLITE_REPLACED:
                op.execute(statement)
