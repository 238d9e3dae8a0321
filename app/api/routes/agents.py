"""/api/agents: registration (idempotent on id), listing with live presence, heartbeats."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy import select

from app import crud
from app.api.deps import AgentsDep, Cursor, DbDep, Limit, ManagerDep, OrderQuery, PathId
from app.api.errors import ApiError, not_found, responses
from app.db.agents import AgentRecorder
from app.db.models import Agent, AgentStatus
from app.db.types import utcnow
from app.realtime.manager import ConnectionManager
from app.schemas import AgentCreate, AgentOut, Page, iso_ms

router = APIRouter(prefix="/api/agents", tags=["agents"])


async def _connections(manager: ConnectionManager) -> dict[str, int]:
    """Agent id → live connections: cluster-wide (nodes holding one) when clustered."""
    cluster = getattr(manager, "cluster", None)
    if cluster is not None:
        return {agent: len(nodes) for agent, nodes in (await cluster.online_agents()).items()}
    return manager.presence.online()


def _out(row: Agent, live: dict[str, int], agents: AgentRecorder) -> AgentOut:
    connections = live.get(row.id, 0)
    online = connections > 0 or row.status == AgentStatus.ONLINE
    last_seen = agents.last_seen(row.id, row.last_seen)
    return AgentOut(
        id=row.id,
        name=row.name,
        kind=row.kind,
        status=AgentStatus.ONLINE if online else AgentStatus.OFFLINE,
        online=online,
        connections=connections,
        last_seen=last_seen,
        metadata=row.metadata_,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


@router.post(
    "",
    status_code=201,
    response_model=AgentOut,
    responses={
        **responses(400),
        200: {"model": AgentOut, "description": "Already registered; updated."},
    },
)
async def register_agent(
    body: AgentCreate,
    response: Response,
    db: DbDep,
    manager: ManagerDep,
    agents: AgentsDep,
) -> AgentOut:
    """Register an agent: 201 the first time, 200 (fields given are updated) after that."""
    for _ in range(3):
        row = await db.get(Agent, body.id, populate_existing=True)
        if row is not None:
            response.status_code = 200
            given = body.model_dump(exclude_unset=True, exclude={"id"})
            for key, value in given.items():
                setattr(row, "metadata_" if key == "metadata" else key, value)
            if given:
                row.updated_at = utcnow()
                await db.commit()
            return _out(row, await _connections(manager), agents)
        now = utcnow()
        row = Agent(
            id=body.id,
            name=body.name,
            kind=body.kind,
            metadata_=body.metadata,
            status=AgentStatus.OFFLINE.value,
            created_at=now,
            updated_at=now,
        )
        try:
            await crud.insert(db, row, "Agent", None)
        except ApiError:
            continue  # registered concurrently: update it instead
        return _out(row, await _connections(manager), agents)
    raise ApiError(409, "CONFLICT", f"Agent {body.id} is being registered concurrently")


@router.get("", response_model=Page[AgentOut])
async def list_agents(
    db: DbDep,
    manager: ManagerDep,
    agents: AgentsDep,
    status: Annotated[AgentStatus | None, Query()] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
    order: OrderQuery = crud.Order.ASC,
) -> Page[AgentOut]:
    """Agents by registration time, oldest first (`order=desc`: newest first), each with its
    live status (connections on this node)."""
    query = select(Agent)
    if status is not None:
        query = query.where(Agent.status == status.value)
    rows, next_cursor = await crud.page(db, query, Agent.created_at, Agent.id, limit, cursor, order)
    live = await _connections(manager)
    return Page[AgentOut](items=[_out(r, live, agents) for r in rows], next_cursor=next_cursor)


@router.get("/{agent_id}", response_model=AgentOut, responses=responses(404))
async def get_agent(
    agent_id: PathId, db: DbDep, manager: ManagerDep, agents: AgentsDep
) -> AgentOut:
    """One agent."""
    row = await db.get(Agent, agent_id)
    if row is None:
        raise not_found("Agent", agent_id)
    return _out(row, await _connections(manager), agents)


@router.post("/{agent_id}/heartbeat", response_model=AgentOut, responses=responses(404))
async def heartbeat(
    agent_id: PathId, db: DbDep, manager: ManagerDep, agents: AgentsDep
) -> AgentOut:
    """Mark the agent alive now: last_seen is written in the next batch; agent.heartbeat."""
    row = await db.get(Agent, agent_id)
    if row is None:
        raise not_found("Agent", agent_id)
    seen = agents.touch(agent_id)
    data = {"agent_id": agent_id, "last_seen": iso_ms(seen), "node_id": manager.node_id}
    for channel in ("global", f"agents/{agent_id}"):
        await manager.publish(channel, "agent.heartbeat", data)
    return _out(row, await _connections(manager), agents)
