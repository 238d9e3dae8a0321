"""Actions: an agent's activity log (it feeds actions_per_minute)."""

from __future__ import annotations

from app.db.models import Action
from app.db.types import utcnow
from app.domain import access
from app.domain.context import Context
from app.domain.rows import insert, new_id
from app.schemas import ActionCreate, ActionOut


async def record_action(ctx: Context, body: ActionCreate) -> ActionOut:
    """Record what an agent did (an agent records only its own actions)."""
    agent_id = access.acting_agent(ctx.actor, body.agent_id, "agent_id")
    row = Action(
        id=body.id or new_id("act"),
        agent_id=agent_id,
        session_id=body.session_id,
        kind=body.kind,
        detail=body.detail,
        created_at=utcnow(),
    )
    await insert(ctx.db, row, "Action")
    return ActionOut.model_validate(row, from_attributes=True)
