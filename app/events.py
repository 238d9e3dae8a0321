"""The server's events, declared by the resource that emits them; the reserved set is derived.

Each resource that emits events has one `ServerEvents` declaration here: the names it emits
and, for a family such as ``task``, the claim on every ``task.*`` name. A reserved event is the
server's: no WebSocket client may publish it on a kind that reserves server events
(app/realtime/channels.py), and over REST only an admin may (docs/security.md). A declaration
with ``reserved=False`` would name an event the server emits that clients may publish too;
none does today. (A WebSocket ``publish`` of ``message.new`` on ``agents/{id}`` is not a
publish but the "send a message" command: the endpoint stores it as a message of the
connection's own agent, and the bridge publishes the event.)

Why a static table and not a registry filled by the emitting modules as they are imported:
what a client may publish must not depend on which modules a process happened to import
before the first publish (a worker that never imported the tasks module would let clients
forge ``task.*``), and the outbox triggers (alembic/versions/) cannot register anything. So
the declarations are constants, importable from anywhere without a cycle (this module imports
nothing of the app); Python emitters can take their names from them (``AGENTS.names``), and
tests/test_events.py holds every emitter to them: it reads the triggers the migrations create
and the publish calls of app/ that name their event, and fails on a name no declaration covers.

To add a resource with events: one declaration below, appended to `DECLARED`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerEvents:
    """The events one resource emits: `names`, and with a `family` every ``<family>.*``."""

    resource: str
    names: tuple[str, ...]
    family: str | None = None
    reserved: bool = True

    def covers(self, event: str) -> bool:
        """Whether `event` is one of this resource's."""
        if self.family is not None and event.startswith(f"{self.family}."):
            return True
        return event in self.names


TASKS = ServerEvents(
    "tasks",
    (
        "task.created",
        "task.updated",
        "task.completed",
        "task.failed",
        # Claims (app/domain/claims.py, dependencies.py), named by the trigger of 0004.
        "task.claimed",
        "task.released",
        "task.lease_expired",
        "task.ready",
    ),
    family="task",
)
SUBTASKS = ServerEvents(
    "subtasks",
    ("subtask.created", "subtask.updated", "subtask.completed", "subtask.failed"),
    family="subtask",
)
MESSAGES = ServerEvents(
    "messages", ("message.new", "message.read", "message.expired"), family="message"
)
RESERVATIONS = ServerEvents(
    "reservations",
    ("reservation.created", "reservation.released", "reservation.expired"),
    family="reservation",
)
AGENTS = ServerEvents(
    "agents", ("agent.connected", "agent.disconnected", "agent.heartbeat"), family="agent"
)
METRICS = ServerEvents("metrics", ("metric.update",), family="metric")
# Webhooks (app/webhooks/): an endpoint disabled (published on `global`); the test event
# (sent to an endpoint only, never published).
WEBHOOKS = ServerEvents("webhooks", ("webhook.disabled", "webhook.test"), family="webhook")

DECLARED: tuple[ServerEvents, ...] = (
    TASKS,
    SUBTASKS,
    MESSAGES,
    RESERVATIONS,
    AGENTS,
    METRICS,
    WEBHOOKS,
)

RESERVED_PREFIXES = tuple(f"{d.family}." for d in DECLARED if d.reserved and d.family)
RESERVED_NAMES = frozenset(name for d in DECLARED if d.reserved for name in d.names)


def is_reserved(event: str) -> bool:
    """Whether `event` is the server's alone (a client may not publish it)."""
    return event.startswith(RESERVED_PREFIXES) or event in RESERVED_NAMES


def declaration(event: str) -> ServerEvents | None:
    """The resource that emits `event`, if one declares it."""
    for declared in DECLARED:
        if declared.covers(event):
            return declared
    return None


def reserved_summary() -> str:
    """The reserved events as the docs list them: `task.*`, …, `message.read`."""
    families = [f"`{d.family}.*`" for d in DECLARED if d.reserved and d.family]
    names = [f"`{n}`" for d in DECLARED if d.reserved and not d.family for n in d.names]
    return ", ".join(families + names)
