"""/api/messages: send (optional TTL), the inbox (`?to_agent=…&unread=true`), mark read."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import ContextDep, Cursor, Limit, OrderQuery, PathId
from app.api.errors import responses
from app.domain import messages
from app.domain.pagination import Order
from app.schemas import Id, MessageCreate, MessageOut, Page

router = APIRouter(prefix="/api/messages", tags=["messages"])


@router.post("", status_code=201, response_model=MessageOut, responses=responses(400, 403, 409))
async def send_message(body: MessageCreate, ctx: ContextDep) -> MessageOut:
    """Store a message for `to_agent`; emits message.new to `agents/{to_agent}`. An agent
    sends as itself."""
    return await messages.send_message(ctx, body)


@router.get("", response_model=Page[MessageOut])
async def list_messages(
    ctx: ContextDep,
    to_agent: Annotated[Id | None, Query()] = None,
    from_agent: Annotated[Id | None, Query()] = None,
    session_id: Annotated[Id | None, Query()] = None,
    unread: Annotated[
        bool | None, Query(description="true: only unread; false: only read.")
    ] = None,
    thread_id: Annotated[Id | None, Query(description="One conversation.")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
    order: OrderQuery = Order.ASC,
) -> Page[MessageOut]:
    """Messages that have not expired, oldest first (`order=desc`: newest first). With an
    agent's token, only the messages to or from that agent."""
    return await messages.list_messages(
        ctx,
        to_agent=to_agent,
        from_agent=from_agent,
        session_id=session_id,
        unread=unread,
        thread_id=thread_id,
        limit=limit,
        cursor=cursor,
        order=order,
    )


@router.get("/{message_id}", response_model=MessageOut, responses=responses(403, 404))
async def get_message(message_id: PathId, ctx: ContextDep) -> MessageOut:
    """One message (expired ones too)."""
    return await messages.get_message(ctx, message_id)


@router.post(
    "/{message_id}/read", response_model=MessageOut, responses=responses(400, 403, 404, 409)
)
async def mark_read(message_id: PathId, ctx: ContextDep) -> MessageOut:
    """Mark a message read (once: emits message.read the first time; 409 once expired). An
    agent marks only its own inbox."""
    return await messages.mark_read(ctx, message_id)
