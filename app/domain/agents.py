"""Agents: registration (idempotent on id), listing with live presence, REST heartbeats.

An agent also exists without registering: the WebSocket upserts it on connect
(db/agents.AgentRecorder), and tasks and messages may name it before it ever appears.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, bindparam, func, or_, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Agent, AgentStatus
from app.db.types import utcnow
from app.domain import access, claims, pagination
from app.domain.context import Context
from app.domain.errors import AlreadyExists, Conflict, NotFound
from app.domain.rows import insert
from app.schemas import AgentCreate, AgentHeartbeat, AgentOut, Page


def _out(ctx: Context, row: Agent, live: dict[str, int]) -> AgentOut:
    connections = live.get(row.id, 0)
    online = connections > 0 or row.status == AgentStatus.ONLINE
    return AgentOut(
        id=row.id,
        name=row.name,
        kind=row.kind,
        status=AgentStatus.ONLINE if online else AgentStatus.OFFLINE,
        online=online,
        connections=connections,
        last_seen=ctx.presence.last_seen(row.id, row.last_seen),
        metadata=row.metadata_,
        created_at=row.created_at,
        updated_at=row.updated_at,
        capabilities=list(row.capabilities or ()),
        summary=row.summary,
        activity=row.activity,
    )


async def register_agent(ctx: Context, body: AgentCreate) -> tuple[AgentOut, bool]:
    """Register an agent (an agent registers itself); returns it and whether it is new.

    Registered again, the fields given are updated.
    """
    agent_id = access.acting_agent(ctx.actor, body.id, "id")
    db = ctx.db
    for _ in range(3):
        row = await db.get(Agent, agent_id, populate_existing=True)
        if row is not None:
            given = body.model_dump(exclude_unset=True, exclude={"id"})
            if "capabilities" in given:
                given["capabilities"] = sorted(set(given["capabilities"] or ())) or None
            for key, value in given.items():
                setattr(row, "metadata_" if key == "metadata" else key, value)
            if given:
                row.updated_at = utcnow()
                await db.commit()
            return _out(ctx, row, await ctx.realtime.live_connections()), False
        now = utcnow()
        row = Agent(
            id=agent_id,
            name=body.name,
            kind=body.kind,
            metadata_=body.metadata,
            capabilities=sorted(set(body.capabilities or ())) or None,
            summary=body.summary,
            activity=body.activity,
            status=AgentStatus.OFFLINE.value,
            created_at=now,
            updated_at=now,
        )
        try:
            await insert(db, row, "Agent")
        except AlreadyExists:
            continue  # registered concurrently: update it instead
        return _out(ctx, row, await ctx.realtime.live_connections()), True
    raise Conflict(f"Agent {agent_id} is being registered concurrently")


async def list_agents(
    ctx: Context,
    *,
    status: AgentStatus | None = None,
    capability: str | None = None,
    online_only: bool = False,
    limit: int = 50,
    cursor: str | None = None,
    order: pagination.Order = pagination.Order.ASC,
) -> Page[AgentOut]:
    """Agents by registration time, each with its live status."""
    query = select(Agent)
    if status is not None:
        query = query.where(Agent.status == status.value)
    if capability is not None:
        query = query.where(has_capability(ctx.db, capability))
    live = await ctx.realtime.live_connections()
    if online_only:
        # Online: a live connection (cluster-wide) or marked online by the recorder.
        query = query.where(or_(Agent.id.in_(list(live)), Agent.status == AgentStatus.ONLINE))
    rows, next_cursor = await pagination.page(
        ctx.db, query, Agent.created_at, Agent.id, limit, cursor, order
    )
    return Page[AgentOut](items=[_out(ctx, r, live) for r in rows], next_cursor=next_cursor)


def has_capability(db: AsyncSession, capability: str) -> ColumnElement[bool]:
    """The agent declares `capability` (a JSON array holds it)."""
    if db.get_bind().dialect.name == "postgresql":
        return Agent.capabilities.op("@>")(bindparam(None, [capability], type_=JSONB))
    listed = func.json_each(Agent.capabilities).table_valued("value").alias("listed")
    return select(listed.c.value).where(listed.c.value == capability).exists()


async def get_agent(ctx: Context, agent_id: str) -> AgentOut:
    row = await ctx.db.get(Agent, agent_id)
    if row is None:
        raise NotFound("Agent", agent_id)
    return _out(ctx, row, await ctx.realtime.live_connections())


async def heartbeat(ctx: Context, agent_id: str, body: AgentHeartbeat | None = None) -> AgentOut:
    """The agent is alive now: last_seen (written in the next batch), its leases renewed,
    agent.heartbeat (throttled per agent as a WebSocket ping's is); with `activity` or
    `summary`, what it says it is doing."""
    access.acting_agent(ctx.actor, agent_id, "agent_id")
    row = await ctx.db.get(Agent, agent_id)
    if row is None:
        raise NotFound("Agent", agent_id)
    said = body.model_dump(exclude_unset=True, exclude_none=True) if body is not None else {}
    if said and any(getattr(row, key) != value for key, value in said.items()):
        for key, value in said.items():
            setattr(row, key, value)
        row.updated_at = utcnow()
        await ctx.db.commit()
    ctx.presence.touch(agent_id)
    await claims.renew_all(ctx.db, agent_id)  # a live agent keeps its leases
    await ctx.realtime.agent_heartbeat(agent_id, ctx.actor.session_id)
    return _out(ctx, row, await ctx.realtime.live_connections())
