"""An agent's inbox: its messages in order, with a durable, acknowledged position.

Every message to an agent takes the next `seq` of the agent's inbox (1, 2, 3, … with no gap)
in the transaction that inserts it (`next_seq`: an upsert of `agent_inboxes` whose row lock
orders concurrent senders; a rollback gives the number back). A reader asks for what follows a
position (`after`), handles it, and acknowledges (`ack`): the acknowledged position is where a
read without `after` starts, so a restarted agent carries on where it stopped — at least once,
never skipping. Reading does not mark anything read (`message.read` stays the per-message
receipt to the sender). Expired messages are left out; their seq stays taken, so the cursor
simply moves past them.
"""

from __future__ import annotations

from collections import Counter
from functools import cache
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.security import Role
from app.db.models import Inbox, Message
from app.db.types import utcnow
from app.domain import access
from app.domain.context import Context
from app.domain.errors import Forbidden, Invalid
from app.realtime.channels import agent_channel
from app.realtime.permissions import Principal
from app.schemas import InboxPage, InboxPosition, MessageOut

MAX_LIMIT = 500
MAX_WAIT = 50.0


async def next_seq(db: AsyncSession, agent_id: str) -> int:
    """The next seq of `agent_id`'s inbox, taken in the caller's transaction."""
    message: dict[str, Any] = {"to_agent": agent_id}
    await take_seqs(db, [message])
    return int(message["seq"])


async def take_seqs(db: AsyncSession, messages: list[dict[str, Any]]) -> None:
    """Give each new message (`to_agent` → its `seq`) the next seqs of its recipient's inbox.

    One upsert for the whole batch, in the caller's transaction: each recipient's counter goes
    up by its number of messages, which then take the seqs below it in list order. Recipients
    are locked in id order, so two batches on PostgreSQL cannot deadlock."""
    counts = Counter(message["to_agent"] for message in messages)
    now = utcnow()
    rows = [
        {"agent_id": agent, "last_seq": n, "acked_seq": 0, "updated_at": now}
        for agent, n in sorted(counts.items())
    ]
    # An executemany of one cached statement: SQLAlchemy sends it as multi-row VALUES batches
    # ("insertmanyvalues"), in this order, and compiles it once, where a statement built per
    # batch cost ≈ 5 % of a message's CPU (py-spy).
    result = await db.execute(_take_seqs(db.get_bind().dialect.name), rows)
    taken = {agent: last - counts[agent] for agent, last in result.all()}
    for message in messages:
        taken[message["to_agent"]] += 1
        message["seq"] = taken[message["to_agent"]]


@cache
def _take_seqs(dialect: str) -> Any:
    """The batch upsert of the inbox counters: each row's `last_seq` is added to the counter."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    table = Inbox.metadata.tables["agent_inboxes"]
    upsert = insert(table)
    return upsert.on_conflict_do_update(
        index_elements=["agent_id"],
        set_={
            "last_seq": table.c.last_seq + upsert.excluded.last_seq,
            "updated_at": upsert.excluded.updated_at,
        },
    ).returning(table.c.agent_id, table.c.last_seq)


def _check_reader(actor: Principal, agent_id: str) -> None:
    """An agent reads its own inbox; the dashboard and admins read any."""
    if actor.role is Role.AGENT and actor.agent_id != agent_id:
        raise Forbidden(f"An agent reads only its own inbox, not {agent_id}'s")


async def position(ctx: Context, agent_id: str) -> InboxPosition:
    _check_reader(ctx.actor, agent_id)
    row = await ctx.db.get(Inbox, agent_id, populate_existing=True)
    acked, last = (row.acked_seq, row.last_seq) if row is not None else (0, 0)
    return InboxPosition(agent_id=agent_id, acked=acked, last_seq=last)


async def _after(ctx: Context, agent_id: str, after: int, limit: int) -> list[MessageOut]:
    now = utcnow()
    rows = await ctx.db.scalars(
        select(Message)
        .where(
            Message.to_agent == agent_id,
            Message.seq > after,
            Message.expired_at.is_(None),
            or_(Message.expires_at.is_(None), Message.expires_at > now),
        )
        .order_by(Message.seq)
        .limit(limit)
    )
    return [MessageOut.model_validate(r, from_attributes=True) for r in rows]


def _is_new_message(event: str) -> bool:
    return event == "message.new"


async def read(
    ctx: Context,
    agent_id: str,
    after: int | None = None,
    limit: int = 100,
    wait: float = 0.0,
) -> InboxPage:
    """Messages after `after` (default: the acknowledged position); with `wait`, up to that
    many seconds for one to arrive (woken by its message.new, on any node)."""
    _check_reader(ctx.actor, agent_id)
    if agent_id == ctx.actor.agent_id:
        ctx.presence.touch(agent_id, create=True)
    if after is None:
        after = (await position(ctx, agent_id)).acked
    await ctx.db.rollback()  # no transaction (no pooled connection) held while waiting
    if wait <= 0:
        messages = await _after(ctx, agent_id, after, limit)
    else:
        channel = agent_channel(agent_id)
        async with ctx.realtime.watch(channel, _is_new_message, wait) as watch:
            while True:
                messages = await _after(ctx, agent_id, after, limit)
                await ctx.db.rollback()
                if messages or watch.expired:
                    break
                await watch.wait()
    cursor = messages[-1].seq if messages and messages[-1].seq is not None else after
    return InboxPage(messages=messages, cursor=cursor)


async def ack(ctx: Context, agent_id: str, up_to: int) -> InboxPosition:
    """Record that `agent_id` has handled its messages up to `up_to` (only ever forwards)."""
    access.acting_agent(ctx.actor, agent_id, "agent_id")
    db = ctx.db
    row = await db.get(Inbox, agent_id, populate_existing=True)
    last = row.last_seq if row is not None else 0
    if up_to > last:
        raise Invalid(
            f"up_to {up_to} is past the newest message of {agent_id}'s inbox ({last})",
            "INVALID_CURSOR",
            ("body", "up_to"),
        )
    if row is not None and up_to > row.acked_seq:
        result: Any = await db.execute(
            update(Inbox)
            .where(Inbox.agent_id == agent_id, Inbox.acked_seq < up_to)
            .values(acked_seq=up_to, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if result.rowcount:
            await db.commit()
    return await position(ctx, agent_id)
