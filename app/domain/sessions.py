"""Sessions: a team's working session; it ends once and stays ended."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from app.db.models import Session, SessionStatus
from app.db.types import utcnow
from app.domain import access, pagination
from app.domain.context import Context
from app.domain.errors import IllegalTransition, NotFound
from app.domain.rows import insert, new_id
from app.schemas import Page, SessionCreate, SessionOut, SessionUpdate


def session_out(row: Session) -> SessionOut:
    return SessionOut(
        id=row.id,
        name=row.name,
        status=SessionStatus(row.status),
        started_at=row.started_at,
        ended_at=row.ended_at,
        metadata=row.metadata_,
    )


async def create_session(ctx: Context, body: SessionCreate) -> SessionOut:
    access.require_writer(ctx.actor)
    row = Session(
        id=body.id or new_id("session"),
        name=body.name,
        metadata_=body.metadata,
        started_at=utcnow(),
    )
    await insert(ctx.db, row, "Session")
    return session_out(row)


async def list_sessions(
    ctx: Context,
    *,
    status: SessionStatus | None = None,
    limit: int = 50,
    cursor: str | None = None,
    order: pagination.Order = pagination.Order.ASC,
) -> Page[SessionOut]:
    """Sessions by start time, optionally only active or ended ones."""
    query = select(Session)
    if status is not None:
        query = query.where(Session.status == status.value)
    rows, next_cursor = await pagination.page(
        ctx.db, query, Session.started_at, Session.id, limit, cursor, order
    )
    return Page[SessionOut](items=[session_out(r) for r in rows], next_cursor=next_cursor)


async def get_session(ctx: Context, session_id: str) -> SessionOut:
    row = await ctx.db.get(Session, session_id)
    if row is None:
        raise NotFound("Session", session_id)
    return session_out(row)


async def update_session(ctx: Context, session_id: str, body: SessionUpdate) -> SessionOut:
    """End (`status: ended`) or rename a session; an ended session stays ended."""
    row = await ctx.db.get(Session, session_id)
    if row is None:
        raise NotFound("Session", session_id)
    access.check_session_writer(ctx.actor, session_id)
    given = body.model_dump(exclude_unset=True)
    changes: dict[str, Any] = {}
    if given.get("status") is not None and given["status"] != row.status:
        if row.status == SessionStatus.ENDED:
            raise IllegalTransition(f"Session {session_id} has ended; it cannot restart")
        changes["status"] = SessionStatus.ENDED.value
        changes["ended_at"] = utcnow()
    if given.get("name") is not None and given["name"] != row.name:
        changes["name"] = given["name"]
    if "metadata" in given and given["metadata"] != row.metadata_:
        changes["metadata_"] = given["metadata"]
    if changes:
        for key, value in changes.items():
            setattr(row, key, value)
        await ctx.db.commit()
    return session_out(row)
