"""Request and response bodies of the REST API, with the examples shown at /docs.

Inputs forbid unknown fields (a typo is a 422, not a silent no-op). Strings may not carry NUL
characters or lone surrogates and JSON values may not hold NaN or Infinity: PostgreSQL refuses
all of them, and the API answers 422 rather than letting the database fail with a 500.
Timestamps are ISO 8601 UTC strings with milliseconds, as in the events' data.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
)

from app.db.models import AgentStatus, SessionStatus, TaskStatus
from app.realtime.channels import ID_PATTERN, channel_pattern

MAX_JSON_DEPTH = 32
MAX_TTL_SECONDS = 30 * 24 * 3600  # a message's longest time to live
# The grammar of app.realtime.channels (derived from its registry of kinds), for the OpenAPI
# document; the routes still check with parse_channel / check_event and answer their codes.
CHANNEL_PATTERN = channel_pattern()
EVENT_PATTERN = r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)+$"


def iso_ms(value: datetime) -> str:
    """2026-01-30T12:00:00.000Z: the timestamp format of the API and of the events."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clean_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


def check_json(value: Any, depth: int = 0) -> None:
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        clean_text(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("JSON numbers must be finite")
    elif isinstance(value, int) and not isinstance(value, bool):
        # What every JSON encoder on the path (orjson, PostgreSQL's jsonb ints) round-trips.
        if not -(2**63) <= value < 2**64:
            raise ValueError("JSON integers must fit in 64 bits")
    elif isinstance(value, dict):
        for key, item in value.items():
            clean_text(key)
            check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_json(item, depth + 1)


def _valid_json(value: Any) -> Any:
    check_json(value)
    return value


Id = Annotated[str, StringConstraints(pattern=f"^{ID_PATTERN}$")]
# The pattern tells OpenAPI clients (and schemathesis) what clean_text enforces.
Text = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$"), AfterValidator(clean_text)]
Name = Annotated[Text, StringConstraints(min_length=1, max_length=200)]
Title = Annotated[Text, StringConstraints(min_length=1, max_length=500)]
LongText = Annotated[Text, StringConstraints(max_length=100_000)]
Kind = Annotated[Text, StringConstraints(min_length=1, max_length=64)]
JsonValue = Annotated[Any, AfterValidator(_valid_json)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_valid_json)]
# strict: JSON `true` is not a priority (lax mode would read it as 1).
Priority = Annotated[int, Field(strict=True, ge=-1_000_000, le=1_000_000)]
Timestamp = Annotated[datetime, PlainSerializer(iso_ms, return_type=str, when_used="json")]

# Claims (app/domain/claims.py).
Capability = Annotated[str, StringConstraints(pattern=f"^{ID_PATTERN}$", max_length=64)]
Capabilities = Annotated[list[Capability], Field(max_length=50)]
DependsOn = Annotated[list[Id], Field(max_length=100)]
Activity = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$"),
    Field(description="In a word: idle, working, blocked, …", examples=["working"]),
]
MaxAttempts = Annotated[int, Field(strict=True, ge=1, le=100)]
LeaseId = Annotated[str, StringConstraints(pattern=r"^lease_[0-9a-f]{32}$")]
LeaseSeconds = Annotated[int, Field(strict=True, ge=1, le=3600)]
WaitSeconds = Annotated[float, Field(strict=True, ge=0, le=50, allow_inf_nan=False)]

T = TypeVar("T")


class Input(BaseModel):
    # allow_inf_nan: Python's JSON parser reads NaN, Infinity and 1e400; a float field refuses them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Page(BaseModel, Generic[T]):
    """One page of a list, oldest first; pass `next_cursor` back as `cursor` for the next."""

    items: list[T]
    next_cursor: str | None = Field(
        None, description="Opaque; null on the last page.", examples=["WyIyMDI2LTAxLTMwIiwieCJd"]
    )


class ErrorBody(BaseModel):
    """Every 404 and 409 (and the publish endpoint's 422) carries a message and a stable code."""

    detail: str = Field(examples=["Task task_123 not found"])
    code: str = Field(examples=["NOT_FOUND"])


class PlainError(BaseModel):
    """FastAPI's own error body (e.g. 400 for a body that is not JSON)."""

    detail: str


# --- sessions --------------------------------------------------------------------------------


class SessionCreate(Input):
    id: Id | None = Field(None, description="Chosen by the client, or generated.")
    name: Name | None = None
    metadata: JsonObject | None = None

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"id": "abc123", "name": "Release 1.4"}]}
    )


class SessionUpdate(Input):
    status: SessionStatus | None = Field(
        None, description="`ended` ends the session (for good: it cannot become active again)."
    )
    name: Name | None = None
    metadata: JsonObject | None = None

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ended"}]})


class SessionOut(BaseModel):
    id: str
    name: str | None
    status: SessionStatus
    started_at: Timestamp
    ended_at: Timestamp | None
    metadata: Any = None


# --- agents ----------------------------------------------------------------------------------


class AgentCreate(Input):
    id: Id | None = Field(
        None,
        description="The agent's id, as it connects: `?agent_id=…`. With an agent's token it "
        "is that agent (another value is 403); otherwise required.",
    )
    name: Name | None = None
    kind: Kind | None = Field(None, description="What sort of agent: e.g. `backend-laravel`.")
    metadata: JsonObject | None = None
    capabilities: Capabilities | None = Field(
        None, description="What it can do; a claim without capabilities uses these."
    )
    summary: LongText | None = Field(None, description="What it is working on, in its words.")
    activity: Activity | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"id": "backend-laravel", "name": "Laravel backend", "kind": "coder"}]
        }
    )


class AgentHeartbeat(Input):
    """What a heartbeat may say besides "alive" (both optional)."""

    activity: Activity | None = None
    summary: LongText | None = None


class AgentOut(BaseModel):
    id: str
    name: str | None
    kind: str | None
    status: AgentStatus = Field(description="online while it has a live WebSocket connection.")
    online: bool
    connections: int = Field(description="Open WebSocket connections on this node.")
    last_seen: Timestamp | None
    metadata: Any = None
    created_at: Timestamp
    updated_at: Timestamp
    capabilities: list[str] = Field(default_factory=list)
    summary: str | None = None
    activity: str | None = None


# --- tasks and subtasks ----------------------------------------------------------------------


class TaskCreate(Input):
    id: Id | None = Field(None, description="Chosen by the client, or generated (`task_…`).")
    title: Title
    description: LongText | None = None
    session_id: Id | None = None
    agent_id: Id | None = Field(None, description="The assignee.")
    priority: Priority = 0
    payload: JsonValue = None
    depends_on: DependsOn = Field(
        default_factory=list,
        description="Tasks that must complete before this one can be claimed (unknown id or "
        "a cycle: 422).",
    )
    capabilities: Capabilities = Field(
        default_factory=list,
        description="What a claimer must have: every one of these among its capabilities.",
    )
    max_attempts: MaxAttempts = Field(3, description="Claims allowed before the task fails.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "title": "Add the login endpoint",
                    "session_id": "abc123",
                    "agent_id": "backend-laravel",
                    "priority": 2,
                    "payload": {"ticket": "APP-12"},
                }
            ]
        }
    )


class TaskUpdate(Input):
    status: TaskStatus | None = Field(
        None,
        description="pending → in_progress → completed | failed | cancelled; "
        "finished tasks do not change.",
    )
    result: JsonValue = None
    error: LongText | None = None
    title: Title | None = None
    description: LongText | None = None
    agent_id: Id | None = None
    priority: Priority | None = None
    payload: JsonValue = None
    depends_on: DependsOn | None = Field(None, description="Replaced; only while pending.")
    capabilities: Capabilities | None = None
    max_attempts: MaxAttempts | None = None
    lease_id: LeaseId | None = Field(
        None, description="Required to change the status of a leased task (409 LEASE_LOST)."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"status": "in_progress"},
                {"status": "completed", "result": {"pr": 42}},
                {"status": "failed", "error": "tests do not pass"},
            ]
        }
    )


class LeaseOut(BaseModel):
    """A claim's lease: renew it before `expires_at`, or another agent may claim the task."""

    id: str
    agent_id: str
    fence: int = Field(description="Grows by one with every claim of the task: a fencing token.")
    expires_at: Timestamp


class TaskOut(BaseModel):
    id: str
    session_id: str | None
    agent_id: str | None
    title: str
    description: str | None
    status: TaskStatus
    priority: int
    payload: Any = None
    result: Any = None
    error: str | None
    created_at: Timestamp
    updated_at: Timestamp
    started_at: Timestamp | None
    completed_at: Timestamp | None
    depends_on: list[str] = Field(default_factory=list)
    capabilities: list[str] = Field(default_factory=list)
    max_attempts: int = 3
    attempts: int = Field(0, description="Claims so far.")
    ready_at: Timestamp | None = Field(
        None, description="When its last dependency completed; null while one is unfinished."
    )
    lease: LeaseOut | None = None


class ClaimRequest(Input):
    agent_id: Id | None = Field(
        None, description="The claimer; with an agent's token, that agent (another value: 403)."
    )
    capabilities: Capabilities = Field(default_factory=list)
    session_id: Id | None = Field(None, description="Only tasks of this session.")
    lease_seconds: LeaseSeconds = 300
    wait_seconds: WaitSeconds = 0

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"agent_id": "coder-1", "capabilities": ["python"], "wait_seconds": 20}]
        }
    )


class Claimed(BaseModel):
    task: TaskOut
    lease: LeaseOut


class LeaseRenew(Input):
    lease_id: LeaseId
    lease_seconds: LeaseSeconds | None = Field(None, description="Default: the claim's.")


class LeaseComplete(Input):
    lease_id: LeaseId
    result: JsonValue = None


class LeaseFail(Input):
    lease_id: LeaseId
    error: LongText
    retry: bool = Field(True, description="Back to pending while attempts are left.")


class LeaseRelease(Input):
    lease_id: LeaseId


class SubtaskCreate(Input):
    id: Id | None = Field(None, description="Chosen by the client, or generated (`subtask_…`).")
    title: Title
    description: LongText | None = None
    agent_id: Id | None = None
    payload: JsonValue = None

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"title": "Write the migration", "agent_id": "db-agent"}]}
    )


class SubtaskUpdate(Input):
    status: TaskStatus | None = None
    result: JsonValue = None
    error: LongText | None = None
    title: Title | None = None
    description: LongText | None = None
    agent_id: Id | None = None
    payload: JsonValue = None

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "completed"}]})


class SubtaskOut(BaseModel):
    id: str
    task_id: str
    agent_id: str | None
    title: str
    description: str | None
    status: TaskStatus
    payload: Any = None
    result: Any = None
    error: str | None
    created_at: Timestamp
    updated_at: Timestamp
    started_at: Timestamp | None
    completed_at: Timestamp | None


# --- messages and actions --------------------------------------------------------------------


class MessageCreate(Input):
    id: Id | None = Field(None, description="Chosen by the client, or generated (`msg_…`).")
    from_agent: Id | None = Field(
        None,
        description="The sender. With an agent's token it is that agent (another value is "
        "403); otherwise required.",
    )
    to_agent: Id
    content: LongText
    data: JsonValue = None
    session_id: Id | None = None
    ttl_seconds: int | None = Field(
        None,
        strict=True,
        ge=1,
        le=MAX_TTL_SECONDS,
        description="Expire (message.expired) after this long.",
    )
    thread_id: Id | None = Field(None, description="The conversation it belongs to.")
    reply_to: Id | None = Field(None, description="The message it answers.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "from_agent": "planner",
                    "to_agent": "backend-laravel",
                    "content": "Hello!",
                    "ttl_seconds": 3600,
                }
            ]
        }
    )


class MessageOut(BaseModel):
    id: str
    from_agent: str
    to_agent: str
    session_id: str | None
    content: str
    data: Any = None
    created_at: Timestamp
    expires_at: Timestamp | None
    read_at: Timestamp | None
    expired_at: Timestamp | None
    seq: int | None = Field(None, description="Its place in the recipient's inbox (1, 2, …).")
    thread_id: str | None = None
    reply_to: str | None = None


class InboxPage(BaseModel):
    """Messages to an agent after a position of its inbox, oldest first."""

    messages: list[MessageOut]
    cursor: int = Field(
        description="The seq of the last message returned (the position asked for when none):"
        " pass it as `after` next, and ack it once handled."
    )


class InboxAck(Input):
    up_to: int = Field(strict=True, ge=0, lt=2**63, description="Handled up to this seq.")


class InboxPosition(BaseModel):
    agent_id: str
    acked: int = Field(description="The acknowledged position: a read without `after` starts here.")
    last_seq: int = Field(description="The seq of the newest message to the agent.")


# --- reservations ----------------------------------------------------------------------------

# A workspace path or glob (app/domain/paths.py); normalised by the domain.
PathPattern = Annotated[Text, StringConstraints(min_length=1, max_length=500)]


class ReservationCreate(Input):
    agent_id: Id | None = Field(
        None, description="Who reserves; with an agent's token, that agent (another value: 403)."
    )
    paths: Annotated[list[PathPattern], Field(min_length=1, max_length=100)] = Field(
        description="Files, directories (everything under them) or globs (`*`, `?`, `**`)."
    )
    exclusive: bool = Field(
        True,
        description="Exclusive: nobody else may hold an overlapping one. Shared: only "
        "others' exclusive ones conflict.",
    )
    ttl_seconds: int = Field(3600, strict=True, ge=1, le=7 * 86400)
    reason: LongText | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"agent_id": "coder-1", "paths": ["src/api/**", "README.md"]}]
        }
    )


class ReservationRenew(Input):
    ttl_seconds: int | None = Field(None, strict=True, ge=1, le=7 * 86400)


class ReservationOut(BaseModel):
    id: str
    agent_id: str
    paths: list[str]
    exclusive: bool
    reason: str | None
    created_at: Timestamp
    expires_at: Timestamp
    released_at: Timestamp | None
    expired_at: Timestamp | None
    active: bool


class ReservationConflict(BaseModel):
    """409 RESERVATION_CONFLICT: nothing was reserved; these stand in the way."""

    detail: str
    code: str = Field(examples=["RESERVATION_CONFLICT"])
    conflicts: list[ReservationOut]


class ActionCreate(Input):
    id: Id | None = Field(None, description="Chosen by the client, or generated (`act_…`).")
    agent_id: Id | None = Field(
        None,
        description="Who acted. With an agent's token it is that agent (another value is "
        "403); otherwise required.",
    )
    session_id: Id | None = None
    kind: Kind = Field(description="What the agent did: `tool_call`, `file_edit`, …")
    detail: JsonValue = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"agent_id": "backend-laravel", "kind": "file_edit", "detail": {"path": "a.php"}}
            ]
        }
    )


class ActionOut(BaseModel):
    id: str
    agent_id: str
    session_id: str | None
    kind: str
    detail: Any = None
    created_at: Timestamp


# --- server-side publish and metrics ---------------------------------------------------------


class EventPublish(Input):
    # The grammar is documented here but checked by the route, which answers the protocol's
    # codes (INVALID_CHANNEL, INVALID_EVENT) rather than a generic pattern mismatch.
    channel: str = Field(
        max_length=1000,
        examples=["topics/deployments"],
        json_schema_extra={"pattern": CHANNEL_PATTERN, "maxLength": 160},
    )
    event: str = Field(
        max_length=1000,
        examples=["deploy.started"],
        json_schema_extra={"pattern": EVENT_PATTERN, "maxLength": 64},
    )
    data: JsonValue = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"channel": "topics/deployments", "event": "deploy.started", "data": {"v": "1.4"}}
            ]
        }
    )


class EventPublished(BaseModel):
    channel: str
    event: str
    offset: int = Field(description="The publication's offset in its channel.")
    timestamp: int = Field(description="Milliseconds since the Unix epoch.")


class MetricsSnapshot(BaseModel):
    """The KPI snapshot: GET /api/metrics, and the data of `metric.update` on `metrics`."""

    active_sessions: int
    active_agents: int
    connected_clients: int = Field(description="WebSocket connections on this node.")
    actions_per_minute: float
    tasks_by_status: dict[str, int]
    tasks_completed_last_hour: int
    tasks_failed_last_hour: int
    failure_rate: float = Field(description="failed / (completed + failed), last hour; 0 if none.")
    mean_task_duration_seconds: float | None = Field(
        description="Mean of completed_at − (started_at or created_at), tasks completed last hour."
    )
    unread_messages: int
    events_per_second: float = Field(description="Outbox events per second, last minute.")
    timestamp: str


# --- webhooks (app/domain/webhooks.py, docs/webhooks.md) -------------------------------------

WebhookUrl = Annotated[Text, StringConstraints(min_length=1, max_length=2048)]
# The patterns' grammar is checked by the domain layer (app/webhooks/filters.py), which says
# which pattern is wrong and why.
EventGlobs = Annotated[
    list[Annotated[str, StringConstraints(min_length=1, max_length=64)]],
    Field(min_length=1, max_length=50),
]
ChannelGlobs = Annotated[
    list[Annotated[str, StringConstraints(min_length=1, max_length=160)]],
    Field(min_length=1, max_length=50),
]
Description = Annotated[Text, StringConstraints(max_length=500)]


class WebhookCreate(Input):
    url: WebhookUrl = Field(description="http(s) URL; its host must resolve to public addresses.")
    events: EventGlobs = Field(
        description="Event types or globs: `task.*`, `message.new`, `agent.disconnected`, `*`."
    )
    channels: ChannelGlobs | None = Field(
        None,
        description="Only events on these channels (globs: `agents/x`, `sessions/*`, "
        "`global`); omitted: every channel.",
    )
    description: Description | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "url": "https://example.com/hooks/cm",
                    "events": ["task.*", "message.new", "agent.disconnected"],
                    "channels": ["sessions/*"],
                    "description": "orchestrator",
                }
            ]
        }
    )


class WebhookUpdate(Input):
    url: WebhookUrl | None = None
    events: EventGlobs | None = None
    channels: ChannelGlobs | None = Field(None, description="null: every channel again.")
    description: Description | None = None
    enabled: bool | None = Field(
        None, description="false stops deliveries (they wait); true resumes them."
    )

    model_config = ConfigDict(json_schema_extra={"examples": [{"enabled": True}]})


class WebhookOut(BaseModel):
    id: str
    url: str
    description: str | None
    events: list[str]
    channels: list[str] | None
    enabled: bool
    disabled_reason: str | None = Field(description="Why it was disabled (410, failing).")
    disabled_at: Timestamp | None
    failing_since: Timestamp | None = Field(description="First failure since the last 2xx.")
    previous_secret_expires_at: Timestamp | None = Field(
        description="Until then the rotated-out secret signs beside the new one."
    )
    pending_deliveries: int
    created_at: Timestamp
    updated_at: Timestamp


class WebhookCreated(WebhookOut):
    secret: str = Field(description="`whsec_…`: shown this once; it signs every delivery.")


class WebhookSecret(BaseModel):
    secret: str = Field(description="The new `whsec_…` secret: shown this once.")
    previous_secret_expires_at: Timestamp = Field(
        description="The old secret signs beside it until then."
    )


class WebhookDeliveryOut(BaseModel):
    """One event owed to one endpoint."""

    id: str = Field(examples=["dlv_42"])
    event_id: str = Field(description="The `webhook-id` header: the same on every attempt.")
    event_type: str
    state: str = Field(description="pending, succeeded or failed (given up).")
    attempts: int
    next_attempt_at: Timestamp | None = Field(description="While pending.")
    created_at: Timestamp


class WebhookAttemptOut(BaseModel):
    """One POST of a delivery."""

    delivery_id: str
    event_id: str
    event_type: str
    attempt: int = Field(description="1 for the first attempt of its delivery.")
    attempted_at: Timestamp
    succeeded: bool
    status_code: int | None = Field(description="null: no answer (refused, timeout, …).")
    latency_ms: float
    response: str | None = Field(description="The first 1 KiB of the answer.")
    error: str | None
    node_id: str | None
    delivery_state: str = Field(description="The delivery's state now.")
