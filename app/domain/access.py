"""Who may do what to whose data: the ownership rules, once, for every front door.

The actor is a `Principal` (an `Identity` from a token, the server's own identity, or a
WebSocket `Connection`). Rules go by role:

| what | admin (and open-mode REST: the server) | dashboard | agent |
|---|---|---|---|
| read tasks, subtasks, sessions, agents | all | all | all |
| read messages | all | all | those to or from itself |
| send a message | as anyone (`from_agent` required) | — | as itself (`from_agent` is its id) |
| mark a message read | any | — | those to itself |
| create a task | yes | — | yes, for any assignee |
| change a task, add or change its subtasks | any | — | tasks assigned to it or to nobody |
| create a session | yes | — | yes |
| change (end, rename) a session | any | — | its own session (the token's `session_id`) |
| register, heartbeat an agent | any | — | itself |
| record an action | as anyone | — | as itself |
| publish (`POST /api/events`) | anything, system events too | — | the WebSocket rules |
| webhooks: endpoints, secrets, deliveries (read or write) | all | — | — |

"As itself": a field naming the writer (`from_agent`, `agent_id` of an action, the id of a
registration) may be left out and is then the actor's own; any other value is `Forbidden`.
The channel rules (subscribe, history, presence, publish) stay in `app/realtime/permissions.py`.
"""

from __future__ import annotations

from app.core.security import Role
from app.domain.errors import Forbidden, Invalid
from app.realtime.permissions import Principal


def require_writer(actor: Principal) -> None:
    """Refuse the read-only dashboard role any write."""
    if actor.role is Role.DASHBOARD:
        raise Forbidden("The dashboard role is read-only")


def require_admin(actor: Principal, what: str) -> None:
    """Only an admin (open-mode REST callers are one): webhooks carry secrets and payloads."""
    if actor.role is not Role.ADMIN:
        raise Forbidden(f"Only an admin may {what}")


def acting_agent(actor: Principal, claimed: str | None, field: str) -> str:
    """The agent a write is made as: an agent's own id; an admin names whom it acts for."""
    require_writer(actor)
    if actor.role is Role.ADMIN:
        if claimed is not None:
            return claimed
        if actor.agent_id is not None:
            return actor.agent_id
        raise Invalid(f"Field '{field}' is required", "MISSING_FIELD", ("body", field))
    own = actor.agent_id
    if own is None:
        raise Forbidden("This identity names no agent")
    if claimed is not None and claimed != own:
        raise Forbidden(f"An agent acts only as itself: '{field}' must be {own!r}")
    return own


def message_party(actor: Principal) -> str | None:
    """The agent whose messages alone the actor may read (None: every message)."""
    if actor.role is Role.AGENT:
        return actor.agent_id or ""
    return None


def check_message_reader(actor: Principal, from_agent: str, to_agent: str) -> None:
    party = message_party(actor)
    if party is not None and party not in (from_agent, to_agent):
        raise Forbidden("An agent reads only the messages to or from itself")


def check_inbox_owner(actor: Principal, to_agent: str) -> None:
    """Marking read is the recipient's receipt."""
    require_writer(actor)
    if actor.role is Role.AGENT and actor.agent_id != to_agent:
        raise Forbidden("An agent marks read only the messages to itself")


def check_task_writer(actor: Principal, kind: str, ident: str, assignee: str | None) -> None:
    """An agent changes only what is assigned to it or to nobody."""
    require_writer(actor)
    if actor.role is Role.AGENT and assignee is not None and assignee != actor.agent_id:
        raise Forbidden(f"{kind} {ident} is assigned to {assignee}, not to this agent")


def check_session_writer(actor: Principal, session_id: str) -> None:
    require_writer(actor)
    if actor.role is Role.AGENT and actor.session_id != session_id:
        raise Forbidden(f"An agent changes only its own session, not {session_id}")
