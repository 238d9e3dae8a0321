"""/api/sessions: a team's working session; PATCH ends it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import ContextDep, Cursor, Limit, OrderQuery, PathId
from app.api.errors import responses
from app.db.models import SessionStatus
from app.domain import sessions
from app.domain.pagination import Order
from app.schemas import Page, SessionCreate, SessionOut, SessionUpdate

router = APIRouter(prefix="/api/sessions", tags=["sessions"])


@router.post("", status_code=201, response_model=SessionOut, responses=responses(400, 403, 409))
async def create_session(body: SessionCreate, ctx: ContextDep) -> SessionOut:
    """Start a session (409 when the id is taken)."""
    return await sessions.create_session(ctx, body)


@router.get("", response_model=Page[SessionOut])
async def list_sessions(
    ctx: ContextDep,
    status: Annotated[SessionStatus | None, Query()] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
    order: OrderQuery = Order.ASC,
) -> Page[SessionOut]:
    """Sessions by start time, oldest first (`order=desc`: newest first), optionally only
    active or ended ones."""
    return await sessions.list_sessions(ctx, status=status, limit=limit, cursor=cursor, order=order)


@router.get("/{session_id}", response_model=SessionOut, responses=responses(404))
async def get_session(session_id: PathId, ctx: ContextDep) -> SessionOut:
    """One session."""
    return await sessions.get_session(ctx, session_id)


@router.patch("/{session_id}", response_model=SessionOut, responses=responses(400, 403, 404, 409))
async def update_session(session_id: PathId, body: SessionUpdate, ctx: ContextDep) -> SessionOut:
    """End a session (`{"status": "ended"}`) or rename it; an ended session stays ended. An
    agent changes only its own session."""
    return await sessions.update_session(ctx, session_id, body)
