"""Messages between agents: send (optional TTL), list and read them, mark them read.

A message is stored first; its trigger writes the `message.new` event that the bridge delivers
to `agents/{to_agent}` once. A WebSocket `publish` of `message.new` on `agents/{id}` is stored
the same way (`send_direct`), so the recipient can also read it over REST.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Message
from app.db.types import utcnow
from app.domain import access, inbox, pagination
from app.domain.context import Context, Writes
from app.domain.errors import Conflict, Invalid, NotFound
from app.domain.rows import Snapshot, insert, insert_values, new_id
from app.realtime.permissions import Principal
from app.schemas import MAX_TTL_SECONDS, MessageCreate, MessageOut, Page, check_json, clean_text

_TABLE = Message.__table__


def message_out(row: Message | Snapshot) -> MessageOut:
    return MessageOut.model_validate(row, from_attributes=True)


async def _store(
    db: AsyncSession | None,
    writes: Writes,
    *,
    from_agent: str,
    to_agent: str,
    content: str,
    data: Any,
    session_id: str | None,
    ttl_seconds: float | None,
    ident: str | None = None,
    thread_id: str | None = None,
    reply_to: str | None = None,
) -> Message | Snapshot:
    """Insert a message with the recipient's next inbox seq, in one transaction.

    With no session (`db` None: the caller holds no transaction), the message goes with the
    next group commit, whose batch takes the seqs of all its messages at once
    (`inbox.take_seqs`)."""
    now = utcnow()
    values = {
        "id": ident or new_id("msg"),
        "from_agent": from_agent,
        "to_agent": to_agent,
        "session_id": session_id,
        "content": content,
        "data": data,
        "created_at": now,
        "expires_at": now + timedelta(seconds=ttl_seconds) if ttl_seconds else None,
        "thread_id": thread_id,
        "reply_to": reply_to,
    }
    if db is None:
        # Column values, not a transient ORM row (as a task's create): the batch sets `seq`.
        return await insert_values(writes, _TABLE, values, "Message", chosen=ident is not None)
    row = Message(**values)
    row.seq = await inbox.next_seq(db, to_agent)
    await insert(db, row, "Message")
    return row


async def send_message(ctx: Context, body: MessageCreate) -> MessageOut:
    """Store a message for `to_agent` from the actor (an admin names the sender)."""
    sender = access.acting_agent(ctx.actor, body.from_agent, "from_agent")
    row = await _store(
        ctx.db if ctx.in_transaction() else None,
        ctx.writes,
        from_agent=sender,
        to_agent=body.to_agent,
        content=body.content,
        data=body.data,
        session_id=body.session_id,
        ttl_seconds=body.ttl_seconds,
        ident=body.id,
        thread_id=body.thread_id,
        reply_to=body.reply_to,
    )
    return message_out(row)


async def send_direct(
    writes: Writes, actor: Principal, sender: str, to_agent: str, data: Any
) -> str:
    """A WebSocket `message.new` on `agents/{to_agent}`, stored; returns the message id.

    The channel rule (permissions.py) has allowed the publish; `sender` is the connection's
    own agent id (or client id), never a field of the message.
    """
    try:
        check_json(data)
        if isinstance(data, dict) and isinstance(data.get("content"), str):
            content = data["content"]
        else:
            content = orjson.dumps(data).decode()
        clean_text(content)
    except ValueError as exc:
        raise Invalid(f"Invalid message data: {exc}", "INVALID_MESSAGE", ("data",)) from None
    ttl = data.get("ttl_seconds") if isinstance(data, dict) else None
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 < ttl <= MAX_TTL_SECONDS:
        ttl = None
    row = await _store(
        None,
        writes,
        from_agent=sender,
        to_agent=to_agent,
        content=content,
        data=data,
        session_id=actor.session_id,
        ttl_seconds=ttl,
    )
    return row.id


def message_filters(
    to_agent: str | None,
    from_agent: str | None,
    session_id: str | None,
    unread: bool | None,
    thread_id: str | None = None,
) -> list[ColumnElement[bool]]:
    filters: list[ColumnElement[bool]] = [Message.expired_at.is_(None)]
    if thread_id is not None:
        filters.append(Message.thread_id == thread_id)
    if to_agent is not None:
        filters.append(Message.to_agent == to_agent)
    if from_agent is not None:
        filters.append(Message.from_agent == from_agent)
    if session_id is not None:
        filters.append(Message.session_id == session_id)
    if unread is True:
        filters.append(Message.read_at.is_(None))
    elif unread is False:
        filters.append(Message.read_at.is_not(None))
    return filters


async def list_messages(
    ctx: Context,
    *,
    to_agent: str | None = None,
    from_agent: str | None = None,
    session_id: str | None = None,
    unread: bool | None = None,
    thread_id: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    order: pagination.Order = pagination.Order.ASC,
) -> Page[MessageOut]:
    """Messages that have not expired, by creation time; an agent sees only its own."""
    filters = message_filters(to_agent, from_agent, session_id, unread, thread_id)
    party = access.message_party(ctx.actor)
    if party is not None:
        filters.append(or_(Message.to_agent == party, Message.from_agent == party))
    query = select(Message).where(*filters)
    rows, next_cursor = await pagination.page(
        ctx.db, query, Message.created_at, Message.id, limit, cursor, order
    )
    return Page[MessageOut](items=[message_out(r) for r in rows], next_cursor=next_cursor)


async def get_message(ctx: Context, message_id: str) -> MessageOut:
    """One message (expired ones too)."""
    row = await ctx.db.get(Message, message_id)
    if row is None:
        raise NotFound("Message", message_id)
    access.check_message_reader(ctx.actor, row.from_agent, row.to_agent)
    return message_out(row)


async def mark_read(ctx: Context, message_id: str) -> MessageOut:
    """The recipient's receipt: message.read the first time; Conflict once expired."""
    db = ctx.db
    row = await db.get(Message, message_id)
    if row is None:
        raise NotFound("Message", message_id)
    access.check_inbox_owner(ctx.actor, row.to_agent)
    result: Any = await db.execute(
        update(Message)
        .where(
            Message.id == message_id,
            Message.read_at.is_(None),
            Message.expired_at.is_(None),
        )
        .values(read_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:
        await db.commit()
    else:
        await db.rollback()
    row = await db.get(Message, message_id, populate_existing=True)
    assert row is not None  # messages are never deleted
    if row.read_at is None and row.expired_at is not None:
        raise Conflict(f"Message {message_id} has expired", "MESSAGE_EXPIRED")
    return message_out(row)
