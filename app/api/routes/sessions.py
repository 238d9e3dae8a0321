"""/api/sessions: a team's working session; PATCH ends it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select

from app import crud
from app.api.deps import BridgeDep, Cursor, DbDep, Limit, OrderQuery, PathId
from app.api.errors import ApiError, not_found, responses
from app.db.models import Session, SessionStatus
from app.db.types import utcnow
from app.schemas import Page, SessionCreate, SessionOut, SessionUpdate

router = APIRouter(prefix="/api/sessions", tags=["sessions"])


def _out(row: Session) -> SessionOut:
    return SessionOut(
        id=row.id,
        name=row.name,
        status=SessionStatus(row.status),
        started_at=row.started_at,
        ended_at=row.ended_at,
        metadata=row.metadata_,
    )


@router.post("", status_code=201, response_model=SessionOut, responses=responses(400, 409))
async def create_session(body: SessionCreate, db: DbDep, bridge: BridgeDep) -> SessionOut:
    """Start a session (409 when the id is taken)."""
    row = Session(
        id=body.id or crud.new_id("session"),
        name=body.name,
        metadata_=body.metadata,
        started_at=utcnow(),
    )
    await crud.insert(db, row, "Session", bridge.wake)
    return _out(row)


@router.get("", response_model=Page[SessionOut])
async def list_sessions(
    db: DbDep,
    status: Annotated[SessionStatus | None, Query()] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
    order: OrderQuery = crud.Order.ASC,
) -> Page[SessionOut]:
    """Sessions by start time, oldest first (`order=desc`: newest first), optionally only
    active or ended ones."""
    query = select(Session)
    if status is not None:
        query = query.where(Session.status == status.value)
    rows, next_cursor = await crud.page(
        db, query, Session.started_at, Session.id, limit, cursor, order
    )
    return Page[SessionOut](items=[_out(r) for r in rows], next_cursor=next_cursor)


@router.get("/{session_id}", response_model=SessionOut, responses=responses(404))
async def get_session(session_id: PathId, db: DbDep) -> SessionOut:
    """One session."""
    row = await db.get(Session, session_id)
    if row is None:
        raise not_found("Session", session_id)
    return _out(row)


@router.patch("/{session_id}", response_model=SessionOut, responses=responses(400, 404, 409))
async def update_session(
    session_id: PathId, body: SessionUpdate, db: DbDep, bridge: BridgeDep
) -> SessionOut:
    """End a session (`{"status": "ended"}`) or rename it; an ended session stays ended."""
    row = await db.get(Session, session_id)
    if row is None:
        raise not_found("Session", session_id)
    given = body.model_dump(exclude_unset=True)
    changes: dict[str, Any] = {}
    if "status" in given and given["status"] is not None and given["status"] != row.status:
        if row.status == SessionStatus.ENDED:
            raise ApiError(
                409, "ILLEGAL_TRANSITION", f"Session {session_id} has ended; it cannot restart"
            )
        changes["status"] = SessionStatus.ENDED.value
        changes["ended_at"] = utcnow()
    if given.get("name") is not None and given["name"] != row.name:
        changes["name"] = given["name"]
    if "metadata" in given and given["metadata"] != row.metadata_:
        changes["metadata_"] = given["metadata"]
    if changes:
        for key, value in changes.items():
            setattr(row, key, value)
        await crud.commit(db, bridge.wake)
    return _out(row)
