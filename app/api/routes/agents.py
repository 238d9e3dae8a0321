"""/api/agents: registration (idempotent on id), listing with live presence, heartbeats."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.api.deps import ContextDep, Cursor, Limit, OrderQuery, PathId
from app.api.errors import responses
from app.db.models import AgentStatus
from app.domain import agents
from app.domain.pagination import Order
from app.schemas import AgentCreate, AgentHeartbeat, AgentOut, Capability, Page

router = APIRouter(prefix="/api/agents", tags=["agents"])


@router.post(
    "",
    status_code=201,
    response_model=AgentOut,
    responses={
        **responses(400, 403),
        200: {"model": AgentOut, "description": "Already registered; updated."},
    },
)
async def register_agent(body: AgentCreate, response: Response, ctx: ContextDep) -> AgentOut:
    """Register an agent: 201 the first time, 200 (fields given are updated) after that. An
    agent registers itself."""
    agent, created = await agents.register_agent(ctx, body)
    if not created:
        response.status_code = 200
    return agent


@router.get("", response_model=Page[AgentOut])
async def list_agents(
    ctx: ContextDep,
    status: Annotated[AgentStatus | None, Query()] = None,
    capability: Annotated[Capability | None, Query(description="Only agents that have it.")] = None,
    online: Annotated[bool | None, Query(description="true: only agents online now.")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
    order: OrderQuery = Order.ASC,
) -> Page[AgentOut]:
    """Agents by registration time, oldest first (`order=desc`: newest first), each with its
    live status (connections on this node)."""
    return await agents.list_agents(
        ctx,
        status=status,
        capability=capability,
        online_only=online is True,
        limit=limit,
        cursor=cursor,
        order=order,
    )


@router.get("/{agent_id}", response_model=AgentOut, responses=responses(404))
async def get_agent(agent_id: PathId, ctx: ContextDep) -> AgentOut:
    """One agent."""
    return await agents.get_agent(ctx, agent_id)


@router.post("/{agent_id}/heartbeat", response_model=AgentOut, responses=responses(400, 403, 404))
async def heartbeat(
    agent_id: PathId, ctx: ContextDep, body: AgentHeartbeat | None = None
) -> AgentOut:
    """Mark the agent alive now: last_seen is written in the next batch, every lease it holds
    is renewed, agent.heartbeat (at most one per HEARTBEAT_INTERVAL); the body may say what it
    is doing. An agent heartbeats only itself."""
    return await agents.heartbeat(ctx, agent_id, body)
