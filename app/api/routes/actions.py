"""POST /api/actions: an agent's activity log (it feeds actions_per_minute)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ContextDep
from app.api.errors import responses
from app.domain import actions
from app.schemas import ActionCreate, ActionOut

router = APIRouter(prefix="/api/actions", tags=["actions"])


@router.post("", status_code=201, response_model=ActionOut, responses=responses(400, 403, 409))
async def record_action(body: ActionCreate, ctx: ContextDep) -> ActionOut:
    """Record what an agent did (an agent records only its own actions)."""
    return await actions.record_action(ctx, body)
