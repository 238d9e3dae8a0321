"""POST /api/actions: an agent's activity log (it feeds actions_per_minute)."""

from __future__ import annotations

from fastapi import APIRouter

from app import crud
from app.api.deps import DbDep
from app.api.errors import responses
from app.db.models import Action
from app.db.types import utcnow
from app.schemas import ActionCreate, ActionOut

router = APIRouter(prefix="/api/actions", tags=["actions"])


@router.post("", status_code=201, response_model=ActionOut, responses=responses(400, 409))
async def record_action(body: ActionCreate, db: DbDep) -> ActionOut:
    """Record what an agent did."""
    row = Action(
        id=body.id or crud.new_id("act"),
        agent_id=body.agent_id,
        session_id=body.session_id,
        kind=body.kind,
        detail=body.detail,
        created_at=utcnow(),
    )
    await crud.insert(db, row, "Action", None)
    return ActionOut.model_validate(row, from_attributes=True)
