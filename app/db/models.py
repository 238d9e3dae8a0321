"""The tables, shared by the REST API, the WebSocket server, the bridge and the metrics task.

Ids are strings: a client may choose one (an agent's id is its name on the WebSocket, a session's
id is what agents pass as ``session_id``); otherwise the API generates ``<kind>_<uuid hex>``.
``session_id`` and ``agent_id`` on tasks, messages and actions are routing keys, not foreign keys:
an agent may be addressed before it ever registers, as on the WebSocket.

`events` is the transactional outbox: rows are appended by database triggers (see the
migration) on every insert or update of tasks, subtasks and messages, in the writer's own
transaction, whoever the writer is. Its increasing id is the event's global offset.

Every column the API filters or sorts on has an index named here; the migration creates the
same ones and `alembic check` proves they agree.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql import func, text, true

from app.db.types import JSONValue, UTCDateTime, utcnow

ID_LENGTH = 128
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SessionStatus(enum.StrEnum):
    ACTIVE = "active"
    ENDED = "ended"


class AgentStatus(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class TaskStatus(enum.StrEnum):
    """The lifecycle of a task and of a subtask; the last three are terminal."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


def _stamped() -> Mapped[datetime]:
    """A NOT NULL timestamp defaulting to now, in Python and for raw SQL inserts alike."""
    return mapped_column(UTCDateTime, default=utcnow, server_default=func.now())


def _in(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Session(Base):
    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(
        String(16), default=SessionStatus.ACTIVE.value, server_default=text("'active'")
    )
    started_at: Mapped[datetime] = _stamped()
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    metadata_: Mapped[Any] = mapped_column("metadata", JSONValue, nullable=True)

    __table_args__ = (
        CheckConstraint(_in("status", SessionStatus), name="status"),
        Index("ix_sessions_started_at", "started_at", "id"),
        Index("ix_sessions_status", "status", "started_at"),
    )


class Agent(Base):
    __tablename__ = "agents"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    kind: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(
        String(16), default=AgentStatus.OFFLINE.value, server_default=text("'offline'")
    )
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime)
    metadata_: Mapped[Any] = mapped_column("metadata", JSONValue, nullable=True)
    created_at: Mapped[datetime] = _stamped()
    updated_at: Mapped[datetime] = _stamped()
    # What the agent says of itself (migration 0004): what it can do (a claim's default
    # capabilities), what it is doing, and in a word how (idle, working, blocked, …).
    capabilities: Mapped[Any] = mapped_column(JSONValue, nullable=True)
    summary: Mapped[str | None] = mapped_column(Text)
    activity: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (
        CheckConstraint(_in("status", AgentStatus), name="status"),
        Index("ix_agents_created_at", "created_at", "id"),
        Index("ix_agents_status", "status", "created_at"),
        Index("ix_agents_last_seen", "last_seen"),
    )


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    session_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    agent_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    title: Mapped[str] = mapped_column(String(500))
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(
        String(16), default=TaskStatus.PENDING.value, server_default=text("'pending'")
    )
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    payload: Mapped[Any] = mapped_column(JSONValue, nullable=True)
    result: Mapped[Any] = mapped_column(JSONValue, nullable=True)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _stamped()
    updated_at: Mapped[datetime] = _stamped()
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # --- claims (migration 0004, app/domain/claims.py) ---------------------------------------
    # What a claimer must have (a JSON list of strings; NULL: nothing).
    capabilities: Mapped[Any] = mapped_column(JSONValue, nullable=True)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3, server_default=text("3"))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # When the last dependency completed (or the task was created without any): claimable
    # from then on. NULL while a dependency is unfinished.
    ready_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The current lease: who holds it, until when; `lease_fence` grows by one per claim, so a
    # holder's writes can be told apart from an older holder's (a fencing token).
    lease_id: Mapped[str | None] = mapped_column(String(64))
    lease_agent_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    lease_fence: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_seconds: Mapped[int | None] = mapped_column(Integer)
    # How the last lease ended: completed, failed, released, expired (the trigger names the
    # event after it: task.released, task.lease_expired).
    lease_outcome: Mapped[str | None] = mapped_column(String(16))
    dependencies: Mapped[list[TaskDependency]] = relationship(
        foreign_keys="TaskDependency.task_id",
        lazy="selectin",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="TaskDependency.depends_on",
    )

    __table_args__ = (
        CheckConstraint(_in("status", TaskStatus), name="status"),
        Index("ix_tasks_created_at", "created_at", "id"),
        Index("ix_tasks_status", "status", "created_at"),
        Index("ix_tasks_agent_id", "agent_id", "created_at"),
        Index("ix_tasks_session_id", "session_id", "created_at"),
        # Metrics: tasks that reached a status in the last hour (a range seek per status).
        Index("ix_tasks_finished", "status", "completed_at"),
        # The lease sweeper and heartbeats: leases by expiry, by holder.
        Index("ix_tasks_lease_expiry", "lease_expires_at"),
        Index("ix_tasks_lease_agent", "lease_agent_id"),
    )


# Claims: pending tasks in claim order (priority DESC, created_at, id), so the pick walks the
# index and stops at the first ready task instead of sorting the queue (migration 0007).
Index("ix_tasks_claim", Task.status, Task.priority.desc(), Task.created_at, Task.id)


class TaskDependency(Base):
    """`task_id` may be claimed once `depends_on` has completed (migration 0004)."""

    __tablename__ = "task_dependencies"

    task_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    depends_on: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )

    __table_args__ = (Index("ix_task_dependencies_depends_on", "depends_on"),)


class Subtask(Base):
    __tablename__ = "subtasks"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    task_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("tasks.id", ondelete="CASCADE")
    )
    agent_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    title: Mapped[str] = mapped_column(String(500))
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(
        String(16), default=TaskStatus.PENDING.value, server_default=text("'pending'")
    )
    payload: Mapped[Any] = mapped_column(JSONValue, nullable=True)
    result: Mapped[Any] = mapped_column(JSONValue, nullable=True)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _stamped()
    updated_at: Mapped[datetime] = _stamped()
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint(_in("status", TaskStatus), name="status"),
        Index("ix_subtasks_task_id", "task_id", "created_at", "id"),
    )


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    from_agent: Mapped[str] = mapped_column(String(ID_LENGTH))
    to_agent: Mapped[str] = mapped_column(String(ID_LENGTH))
    session_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    content: Mapped[str] = mapped_column(Text)
    data: Mapped[Any] = mapped_column(JSONValue, nullable=True)
    created_at: Mapped[datetime] = _stamped()
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set once by the TTL sweeper; its trigger writes the one message.expired event.
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The recipient's inbox sequence: 1, 2, 3, … per `to_agent`, gapless, given in the
    # inserting transaction (migration 0004; a trigger gives one to raw SQL inserts).
    seq: Mapped[int | None] = mapped_column(BigInteger)
    thread_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    reply_to: Mapped[str | None] = mapped_column(String(ID_LENGTH))

    __table_args__ = (
        Index("ix_messages_inbox", "to_agent", "seq", unique=True),
        Index("ix_messages_thread", "thread_id", "created_at"),
        Index("ix_messages_created_at", "created_at", "id"),
        # The inbox: ?to_agent=…&unread=true, oldest first.
        Index("ix_messages_to_agent", "to_agent", "read_at", "created_at"),
        Index("ix_messages_from_agent", "from_agent", "created_at"),
        Index("ix_messages_session_id", "session_id", "created_at"),
        # The TTL sweeper: not yet expired, expiry due.
        Index("ix_messages_expiry", "expired_at", "expires_at"),
        # Metrics: unread and not expired.
        Index("ix_messages_unread", "read_at", "expired_at"),
    )


class Inbox(Base):
    """An agent's inbox: the last sequence given and the position it acknowledged."""

    __tablename__ = "agent_inboxes"

    agent_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    acked_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    updated_at: Mapped[datetime] = _stamped()


class Reservation(Base):
    """An advisory claim on paths of a shared workspace (app/domain/reservations.py)."""

    __tablename__ = "reservations"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    paths: Mapped[Any] = mapped_column(JSONValue)
    exclusive: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _stamped()
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Set once each: the triggers write reservation.released / reservation.expired.
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_reservations_active", "released_at", "expired_at", "expires_at"),
        Index("ix_reservations_agent_id", "agent_id", "created_at"),
    )


# How long the answer to a POST with an Idempotency-Key is replayed (api/idempotency.py).
IDEMPOTENCY_TTL = timedelta(hours=24)


class IdempotencyKey(Base):
    """The first answer to a POST with an `Idempotency-Key`, replayed to its retries."""

    __tablename__ = "idempotency_keys"

    # Whose key: the caller's identity, so two agents' keys never meet.
    scope: Mapped[str] = mapped_column(String(200), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    # NULL while the first request runs.
    status_code: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(Text)
    content_type: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = _stamped()

    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)


class Action(Base):
    __tablename__ = "actions"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    session_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    kind: Mapped[str] = mapped_column(String(64))
    detail: Mapped[Any] = mapped_column(JSONValue, nullable=True)
    created_at: Mapped[datetime] = _stamped()

    __table_args__ = (
        # Metrics: actions in the last minute.
        Index("ix_actions_created_at", "created_at"),
        Index("ix_actions_agent_id", "agent_id", "created_at"),
        Index("ix_actions_session_id", "session_id", "created_at"),
    )


class Event(Base):
    """One row of the outbox, written by the triggers; read by the bridge in id order."""

    __tablename__ = "events"

    # SQLite only auto-increments INTEGER PRIMARY KEY; AUTOINCREMENT forbids reusing an id
    # after the newest rows are deleted, which would make the bridge skip events.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event: Mapped[str] = mapped_column(String(64))
    entity: Mapped[str] = mapped_column(String(16))
    entity_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    session_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    agent_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    data: Mapped[Any] = mapped_column(JSONValue, nullable=False)
    created_at: Mapped[datetime] = _stamped()

    __table_args__ = (
        # Metrics: events in the last minute.
        Index("ix_events_created_at", "created_at"),
        Index("ix_events_entity_id", "entity_id"),
        {"sqlite_autoincrement": True},
    )


class BridgeCursor(Base):
    """How far a bridge has published the outbox, so that a restart or a new leader resumes
    there instead of at the head (migration 0003).

    One row per publishing scope: ``cluster:<BROKER_PREFIX>`` for the one leader of a cluster
    on a shared broker, ``node:<NODE_ID>`` (or ``local``) for a bridge that serves only its
    own process's clients. `last_id` only grows (``UPDATE … WHERE last_id < :id``).
    """

    __tablename__ = "bridge_cursor"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = _stamped()


# --- webhooks (migration 0005, app/webhooks/, docs/webhooks.md) ----------------------------------


class WebhookState(enum.StrEnum):
    """A delivery's state: pending until an attempt succeeds or the schedule is used up."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class WebhookEndpoint(Base):
    """A URL that gets a signed POST for every event its filter matches (app/domain/webhooks.py).

    `start_after` is the outbox id at registration: the endpoint gets the events after it. The
    lease columns say which node is delivering to it now (one attempt at a time per endpoint,
    so its events arrive in order); `lease_token` fences a node whose lease ran out.
    """

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    events: Mapped[Any] = mapped_column(JSONValue)
    channels: Mapped[Any] = mapped_column(JSONValue, nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Both secrets sign while `previous_secret_expires_at` is in the future (a rotation).
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    start_after: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    # The first failure since the last success: an endpoint failing for too long is disabled.
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = _stamped()
    updated_at: Mapped[datetime] = _stamped()

    __table_args__ = (Index("ix_webhook_endpoints_created_at", "created_at", "id"),)


class WebhookDelivery(Base):
    """One event owed to one endpoint: the exact body, and where its retries stand.

    The outbox of deliveries: written in the transaction that moves the dispatcher's cursor
    (or records a presence event), taken by whichever node leases the endpoint; per endpoint
    the lowest pending id goes first.
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    endpoint_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(
        String(16), default=WebhookState.PENDING.value, server_default=text("'pending'")
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # A manual retry allows exactly one more attempt; NULL: the retry schedule decides.
    attempt_limit: Mapped[int | None] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime] = _stamped()
    created_at: Mapped[datetime] = _stamped()
    updated_at: Mapped[datetime] = _stamped()

    __table_args__ = (
        CheckConstraint(_in("state", WebhookState), name="state"),
        # The queue: an endpoint's pending deliveries, lowest id first.
        Index("ix_webhook_deliveries_queue", "endpoint_id", "state", "id"),
        # Retention: finished deliveries by age.
        Index("ix_webhook_deliveries_finished", "state", "updated_at"),
        {"sqlite_autoincrement": True},
    )


class WebhookAttempt(Base):
    """One POST of a delivery: when, by which node, what came back (the first 1 KiB)."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    delivery_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"),
    )
    endpoint_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    attempt: Mapped[int] = mapped_column(Integer)
    attempted_at: Mapped[datetime] = _stamped()
    succeeded: Mapped[bool] = mapped_column(Boolean)
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    response: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    node_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))

    __table_args__ = (
        Index("ix_webhook_attempts_endpoint_id", "endpoint_id", "id"),
        Index("ix_webhook_attempts_delivery_id", "delivery_id", "id"),
        {"sqlite_autoincrement": True},
    )


class WebhookCursor(Base):
    """How far the webhook dispatcher has fanned the outbox out into deliveries (one row,
    ``outbox``; written in the same transaction as the deliveries, so none is lost or doubled).
    """

    __tablename__ = "webhook_cursor"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = _stamped()
