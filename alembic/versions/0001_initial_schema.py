"""Initial schema: the seven tables, their indexes, and the change triggers feeding `events`.

The triggers are the bridge's source: every insert or update of tasks, subtasks and messages
appends its seed event to `events` in the writer's own transaction, whoever the writer is (the
API, another process, psql). SQLite gets plain triggers; PostgreSQL gets plpgsql functions
that also take a transaction-scoped advisory lock before taking an id — so ids become visible
in id order and a reader that remembers its last id never skips a row committed late — and
NOTIFY `cm_events` (a constant payload, so a transaction writing a million rows queues one
notification, not a million).

Revision ID: 0001
Revises:
Create Date: 2026-01-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# pg_advisory_xact_lock key that orders writers of `events` ("cmev").
EVENTS_LOCK = 0x636D6576
NOTIFY_CHANNEL = "cm_events"

# (key in the event data, column, kind) for each table; kind: raw, json or time.
TASK_FIELDS = [
    ("task_id", "id", "raw"),
    ("session_id", "session_id", "raw"),
    ("agent_id", "agent_id", "raw"),
    ("title", "title", "raw"),
    ("description", "description", "raw"),
    ("status", "status", "raw"),
    ("priority", "priority", "raw"),
    ("payload", "payload", "json"),
    ("result", "result", "json"),
    ("error", "error", "raw"),
    ("created_at", "created_at", "time"),
    ("updated_at", "updated_at", "time"),
    ("started_at", "started_at", "time"),
    ("completed_at", "completed_at", "time"),
]
SUBTASK_FIELDS = [
    ("subtask_id", "id", "raw"),
    ("task_id", "task_id", "raw"),
    ("agent_id", "agent_id", "raw"),
    ("title", "title", "raw"),
    ("description", "description", "raw"),
    ("status", "status", "raw"),
    ("payload", "payload", "json"),
    ("result", "result", "json"),
    ("error", "error", "raw"),
    ("created_at", "created_at", "time"),
    ("updated_at", "updated_at", "time"),
    ("started_at", "started_at", "time"),
    ("completed_at", "completed_at", "time"),
]
MESSAGE_FIELDS = [
    ("message_id", "id", "raw"),
    ("from_agent", "from_agent", "raw"),
    ("to_agent", "to_agent", "raw"),
    ("session_id", "session_id", "raw"),
    ("content", "content", "raw"),
    ("data", "data", "json"),
    ("created_at", "created_at", "time"),
    ("expires_at", "expires_at", "time"),
    ("read_at", "read_at", "time"),
    ("expired_at", "expired_at", "time"),
]
TASK_COLUMNS = [column for _, column, _ in TASK_FIELDS]
SUBTASK_COLUMNS = [column for _, column, _ in SUBTASK_FIELDS]


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


# --- SQLite ------------------------------------------------------------------------------------

SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"


def _sqlite_value(column: str, kind: str, row: str = "NEW") -> str:
    ref = f"{row}.{column}"
    if kind == "json":
        return f"CASE WHEN json_valid({ref}) THEN json({ref}) ELSE {ref} END"
    if kind == "time":
        # Cut the stored text rather than strftime('%f'), which rounds: the API truncates to
        # milliseconds, and the event must show the same value.
        return (
            f"CASE WHEN length({ref}) >= 23 "
            f"THEN substr({ref}, 1, 10) || 'T' || substr({ref}, 12, 12) || 'Z' "
            f"ELSE strftime('%Y-%m-%dT%H:%M:%fZ', {ref}) END"
        )
    return ref


def _sqlite_object(fields: list[tuple[str, str, str]], extra: dict[str, str]) -> str:
    parts = [f"'{key}', {_sqlite_value(column, kind)}" for key, column, kind in fields]
    parts += [f"'{key}', {expr}" for key, expr in extra.items()]
    return "json_object(" + ", ".join(parts) + ")"


def _sqlite_changed(columns: list[str]) -> str:
    return " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in columns)


def _sqlite_trigger(
    name: str, timing: str, table: str, when: str | None, values: dict[str, str]
) -> str:
    columns = ", ".join(values)
    exprs = ", ".join(values.values())
    when_sql = f" WHEN {when}" if when else ""
    return (
        f"CREATE TRIGGER {name} AFTER {timing} ON {table} FOR EACH ROW{when_sql} BEGIN "
        f"INSERT INTO events ({columns}) VALUES ({exprs}); END"
    )


def _status_event(prefix: str) -> str:
    return (
        f"CASE WHEN NEW.status IS NOT OLD.status AND NEW.status = 'completed' "
        f"THEN '{prefix}.completed' "
        f"WHEN NEW.status IS NOT OLD.status AND NEW.status = 'failed' THEN '{prefix}.failed' "
        f"ELSE '{prefix}.updated' END"
    )


def _sqlite_triggers() -> list[str]:
    parent_session = "(SELECT session_id FROM tasks WHERE id = NEW.task_id)"
    parent_agent = "COALESCE(NEW.agent_id, (SELECT agent_id FROM tasks WHERE id = NEW.task_id))"

    def task(event: str, previous: str) -> dict[str, str]:
        return {
            "event": event,
            "entity": "'task'",
            "entity_id": "NEW.id",
            "session_id": "NEW.session_id",
            "agent_id": "NEW.agent_id",
            "data": _sqlite_object(TASK_FIELDS, {"previous_status": previous}),
            "created_at": SQLITE_NOW,
        }

    def subtask(event: str, previous: str) -> dict[str, str]:
        return {
            "event": event,
            "entity": "'subtask'",
            "entity_id": "NEW.id",
            "session_id": parent_session,
            "agent_id": parent_agent,
            "data": _sqlite_object(
                SUBTASK_FIELDS, {"session_id": parent_session, "previous_status": previous}
            ),
            "created_at": SQLITE_NOW,
        }

    def message(event: str) -> dict[str, str]:
        return {
            "event": f"'{event}'",
            "entity": "'message'",
            "entity_id": "NEW.id",
            "session_id": "NEW.session_id",
            "agent_id": "NEW.to_agent",
            "data": _sqlite_object(MESSAGE_FIELDS, {}),
            "created_at": SQLITE_NOW,
        }

    return [
        _sqlite_trigger(
            "tasks_event_insert", "INSERT", "tasks", None, task("'task.created'", "NULL")
        ),
        _sqlite_trigger(
            "tasks_event_update",
            "UPDATE",
            "tasks",
            _sqlite_changed(TASK_COLUMNS),
            task(_status_event("task"), "OLD.status"),
        ),
        _sqlite_trigger(
            "subtasks_event_insert",
            "INSERT",
            "subtasks",
            None,
            subtask("'subtask.created'", "NULL"),
        ),
        _sqlite_trigger(
            "subtasks_event_update",
            "UPDATE",
            "subtasks",
            _sqlite_changed(SUBTASK_COLUMNS),
            subtask(_status_event("subtask"), "OLD.status"),
        ),
        _sqlite_trigger(
            "messages_event_insert", "INSERT", "messages", None, message("message.new")
        ),
        _sqlite_trigger(
            "messages_event_read",
            "UPDATE",
            "messages",
            "OLD.read_at IS NULL AND NEW.read_at IS NOT NULL",
            message("message.read"),
        ),
        _sqlite_trigger(
            "messages_event_expired",
            "UPDATE",
            "messages",
            "OLD.expired_at IS NULL AND NEW.expired_at IS NOT NULL",
            message("message.expired"),
        ),
    ]


SQLITE_TRIGGER_NAMES = [
    "tasks_event_insert",
    "tasks_event_update",
    "subtasks_event_insert",
    "subtasks_event_update",
    "messages_event_insert",
    "messages_event_read",
    "messages_event_expired",
]


# --- PostgreSQL --------------------------------------------------------------------------------


def _pg_value(column: str, kind: str) -> str:
    ref = f"NEW.{column}"
    if kind == "time":
        return f"""to_char({ref} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""
    return ref


def _pg_object(fields: list[tuple[str, str, str]], extra: dict[str, str]) -> str:
    parts = [f"'{key}', {_pg_value(column, kind)}" for key, column, kind in fields]
    parts += [f"'{key}', {expr}" for key, expr in extra.items()]
    return "jsonb_build_object(" + ", ".join(parts) + ")"


def _pg_status_event(prefix: str) -> str:
    return f"""
    IF TG_OP = 'INSERT' THEN
      ev := '{prefix}.created';
    ELSIF NEW.status IS DISTINCT FROM OLD.status AND NEW.status = 'completed' THEN
      ev := '{prefix}.completed';
    ELSIF NEW.status IS DISTINCT FROM OLD.status AND NEW.status = 'failed' THEN
      ev := '{prefix}.failed';
    ELSE
      ev := '{prefix}.updated';
    END IF;
    IF TG_OP = 'UPDATE' THEN
      previous := OLD.status;
    END IF;"""


def _pg_statements() -> list[str]:
    emit = f"""
CREATE FUNCTION cm_emit_event(ev text, entity text, entity_id text, session_id text,
                              agent_id text, data jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  -- Writers of events queue here until the previous one commits: ids become visible in
  -- order, so the bridge can read "id > last id" without ever skipping a late commit.
  PERFORM pg_advisory_xact_lock({EVENTS_LOCK});
  INSERT INTO events (event, entity, entity_id, session_id, agent_id, data, created_at)
  VALUES (ev, entity, entity_id, session_id, agent_id, data, now());
  PERFORM pg_notify('{NOTIFY_CHANNEL}', '');
END $$"""
    task_fn = f"""
CREATE FUNCTION cm_task_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  ev text;
  previous text := NULL;
BEGIN{_pg_status_event("task")}
  PERFORM cm_emit_event(ev, 'task', NEW.id, NEW.session_id, NEW.agent_id,
    {_pg_object(TASK_FIELDS, {"previous_status": "previous"})});
  RETURN NULL;
END $$"""
    subtask_fn = f"""
CREATE FUNCTION cm_subtask_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  ev text;
  previous text := NULL;
  parent_session text;
  parent_agent text;
BEGIN{_pg_status_event("subtask")}
  SELECT t.session_id, t.agent_id INTO parent_session, parent_agent
    FROM tasks t WHERE t.id = NEW.task_id;
  PERFORM cm_emit_event(ev, 'subtask', NEW.id, parent_session,
    COALESCE(NEW.agent_id, parent_agent),
    {_pg_object(SUBTASK_FIELDS, {"session_id": "parent_session", "previous_status": "previous"})});
  RETURN NULL;
END $$"""
    message_fn = f"""
CREATE FUNCTION cm_message_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM cm_emit_event(TG_ARGV[0], 'message', NEW.id, NEW.session_id, NEW.to_agent,
    {_pg_object(MESSAGE_FIELDS, {})});
  RETURN NULL;
END $$"""
    return [
        emit,
        task_fn,
        subtask_fn,
        message_fn,
        "CREATE TRIGGER tasks_event_insert AFTER INSERT ON tasks "
        "FOR EACH ROW EXECUTE FUNCTION cm_task_event()",
        "CREATE TRIGGER tasks_event_update AFTER UPDATE ON tasks "
        "FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION cm_task_event()",
        "CREATE TRIGGER subtasks_event_insert AFTER INSERT ON subtasks "
        "FOR EACH ROW EXECUTE FUNCTION cm_subtask_event()",
        "CREATE TRIGGER subtasks_event_update AFTER UPDATE ON subtasks "
        "FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION cm_subtask_event()",
        "CREATE TRIGGER messages_event_insert AFTER INSERT ON messages "
        "FOR EACH ROW EXECUTE FUNCTION cm_message_event('message.new')",
        "CREATE TRIGGER messages_event_read AFTER UPDATE ON messages FOR EACH ROW "
        "WHEN (OLD.read_at IS NULL AND NEW.read_at IS NOT NULL) "
        "EXECUTE FUNCTION cm_message_event('message.read')",
        "CREATE TRIGGER messages_event_expired AFTER UPDATE ON messages FOR EACH ROW "
        "WHEN (OLD.expired_at IS NULL AND NEW.expired_at IS NOT NULL) "
        "EXECUTE FUNCTION cm_message_event('message.expired')",
    ]


PG_FUNCTIONS = ["cm_message_event()", "cm_subtask_event()", "cm_task_event()"]
PG_EMIT = "cm_emit_event(text, text, text, text, text, jsonb)"


# --- tables ------------------------------------------------------------------------------------


def _status(default: str) -> sa.Column[str]:
    return sa.Column(
        "status", sa.String(16), nullable=False, server_default=sa.text(f"'{default}'")
    )


def _stamped(name: str) -> sa.Column[object]:
    return sa.Column(name, _time(), nullable=False, server_default=sa.func.now())


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        _status("active"),
        _stamped("started_at"),
        sa.Column("ended_at", _time(), nullable=True),
        sa.Column("metadata", _json(), nullable=True),
        sa.CheckConstraint("status IN ('active', 'ended')", name=op.f("ck_sessions_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    op.create_index("ix_sessions_started_at", "sessions", ["started_at", "id"])
    op.create_index("ix_sessions_status", "sessions", ["status", "started_at"])

    op.create_table(
        "agents",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("kind", sa.String(64), nullable=True),
        _status("offline"),
        sa.Column("last_seen", _time(), nullable=True),
        sa.Column("metadata", _json(), nullable=True),
        _stamped("created_at"),
        _stamped("updated_at"),
        sa.CheckConstraint("status IN ('online', 'offline')", name=op.f("ck_agents_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agents")),
    )
    op.create_index("ix_agents_created_at", "agents", ["created_at", "id"])
    op.create_index("ix_agents_status", "agents", ["status", "created_at"])
    op.create_index("ix_agents_last_seen", "agents", ["last_seen"])

    task_status_check = "status IN ('pending', 'in_progress', 'completed', 'failed', 'cancelled')"
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("session_id", sa.String(128), nullable=True),
        sa.Column("agent_id", sa.String(128), nullable=True),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        _status("pending"),
        sa.Column("priority", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("payload", _json(), nullable=True),
        sa.Column("result", _json(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _stamped("created_at"),
        _stamped("updated_at"),
        sa.Column("started_at", _time(), nullable=True),
        sa.Column("completed_at", _time(), nullable=True),
        sa.CheckConstraint(task_status_check, name=op.f("ck_tasks_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
    )
    op.create_index("ix_tasks_created_at", "tasks", ["created_at", "id"])
    op.create_index("ix_tasks_status", "tasks", ["status", "created_at"])
    op.create_index("ix_tasks_agent_id", "tasks", ["agent_id", "created_at"])
    op.create_index("ix_tasks_session_id", "tasks", ["session_id", "created_at"])
    op.create_index("ix_tasks_finished", "tasks", ["status", "completed_at"])

    op.create_table(
        "subtasks",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("agent_id", sa.String(128), nullable=True),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        _status("pending"),
        sa.Column("payload", _json(), nullable=True),
        sa.Column("result", _json(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _stamped("created_at"),
        _stamped("updated_at"),
        sa.Column("started_at", _time(), nullable=True),
        sa.Column("completed_at", _time(), nullable=True),
        sa.CheckConstraint(task_status_check, name=op.f("ck_subtasks_status")),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_subtasks_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subtasks")),
    )
    op.create_index("ix_subtasks_task_id", "subtasks", ["task_id", "created_at", "id"])

    op.create_table(
        "messages",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("from_agent", sa.String(128), nullable=False),
        sa.Column("to_agent", sa.String(128), nullable=False),
        sa.Column("session_id", sa.String(128), nullable=True),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("data", _json(), nullable=True),
        _stamped("created_at"),
        sa.Column("expires_at", _time(), nullable=True),
        sa.Column("read_at", _time(), nullable=True),
        sa.Column("expired_at", _time(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
    )
    op.create_index("ix_messages_created_at", "messages", ["created_at", "id"])
    op.create_index("ix_messages_to_agent", "messages", ["to_agent", "read_at", "created_at"])
    op.create_index("ix_messages_from_agent", "messages", ["from_agent", "created_at"])
    op.create_index("ix_messages_session_id", "messages", ["session_id", "created_at"])
    op.create_index("ix_messages_expiry", "messages", ["expired_at", "expires_at"])
    op.create_index("ix_messages_unread", "messages", ["read_at", "expired_at"])

    op.create_table(
        "actions",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("agent_id", sa.String(128), nullable=False),
        sa.Column("session_id", sa.String(128), nullable=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("detail", _json(), nullable=True),
        _stamped("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_actions")),
    )
    op.create_index("ix_actions_created_at", "actions", ["created_at"])
    op.create_index("ix_actions_agent_id", "actions", ["agent_id", "created_at"])
    op.create_index("ix_actions_session_id", "actions", ["session_id", "created_at"])

    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("entity", sa.String(16), nullable=False),
        sa.Column("entity_id", sa.String(128), nullable=False),
        sa.Column("session_id", sa.String(128), nullable=True),
        sa.Column("agent_id", sa.String(128), nullable=True),
        sa.Column("data", _json(), nullable=False),
        _stamped("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_created_at", "events", ["created_at"])
    op.create_index("ix_events_entity_id", "events", ["entity_id"])

    dialect = op.get_bind().dialect.name
    statements = _pg_statements() if dialect == "postgresql" else _sqlite_triggers()
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        for table, names in (
            ("tasks", ("tasks_event_insert", "tasks_event_update")),
            ("subtasks", ("subtasks_event_insert", "subtasks_event_update")),
            (
                "messages",
                ("messages_event_insert", "messages_event_read", "messages_event_expired"),
            ),
        ):
            for name in names:
                op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        for function in PG_FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {function}")
        op.execute(f"DROP FUNCTION IF EXISTS {PG_EMIT}")
    else:
        for name in SQLITE_TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    for table in ("events", "actions", "messages", "subtasks", "tasks", "agents", "sessions"):
        op.drop_table(table)
