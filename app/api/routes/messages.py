"""/api/messages: send (optional TTL), the inbox (`?to_agent=…&unread=true`), mark read."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select, update

from app import crud
from app.api.deps import BridgeDep, Cursor, DbDep, Limit, OrderQuery, PathId
from app.api.errors import ApiError, not_found, responses
from app.db.models import Message
from app.db.types import utcnow
from app.schemas import Id, MessageCreate, MessageOut, Page

router = APIRouter(prefix="/api/messages", tags=["messages"])


def message_out(row: Message) -> MessageOut:
    return MessageOut.model_validate(row, from_attributes=True)


@router.post("", status_code=201, response_model=MessageOut, responses=responses(400, 409))
async def send_message(body: MessageCreate, db: DbDep, bridge: BridgeDep) -> MessageOut:
    """Store a message for `to_agent`; emits message.new to `agents/{to_agent}`."""
    row = await crud.create_message(
        db,
        from_agent=body.from_agent,
        to_agent=body.to_agent,
        content=body.content,
        data=body.data,
        session_id=body.session_id,
        ttl_seconds=body.ttl_seconds,
        ident=body.id,
        wake=bridge.wake,
    )
    return message_out(row)


@router.get("", response_model=Page[MessageOut])
async def list_messages(
    db: DbDep,
    to_agent: Annotated[Id | None, Query()] = None,
    from_agent: Annotated[Id | None, Query()] = None,
    session_id: Annotated[Id | None, Query()] = None,
    unread: Annotated[
        bool | None, Query(description="true: only unread; false: only read.")
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
    order: OrderQuery = crud.Order.ASC,
) -> Page[MessageOut]:
    """Messages that have not expired, oldest first (`order=desc`: newest first)."""
    query = select(Message).where(*crud.message_filters(to_agent, from_agent, session_id, unread))
    rows, next_cursor = await crud.page(
        db, query, Message.created_at, Message.id, limit, cursor, order
    )
    return Page[MessageOut](items=[message_out(r) for r in rows], next_cursor=next_cursor)


@router.get("/{message_id}", response_model=MessageOut, responses=responses(404))
async def get_message(message_id: PathId, db: DbDep) -> MessageOut:
    """One message (expired ones too)."""
    row = await db.get(Message, message_id)
    if row is None:
        raise not_found("Message", message_id)
    return message_out(row)


@router.post("/{message_id}/read", response_model=MessageOut, responses=responses(400, 404, 409))
async def mark_read(message_id: PathId, db: DbDep, bridge: BridgeDep) -> MessageOut:
    """Mark a message read (once: emits message.read the first time; 409 once expired)."""
    result = await db.execute(
        update(Message)
        .where(
            Message.id == message_id,
            Message.read_at.is_(None),
            Message.expired_at.is_(None),
        )
        .values(read_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) == 1:
        await crud.commit(db, bridge.wake)
    else:
        await db.rollback()
    row = await db.get(Message, message_id, populate_existing=True)
    if row is None:
        raise not_found("Message", message_id)
    if row.read_at is None and row.expired_at is not None:
        raise ApiError(409, "MESSAGE_EXPIRED", f"Message {message_id} has expired")
    return message_out(row)
