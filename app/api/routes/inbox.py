"""An agent's inbox: GET /api/agents/{id}/inbox (long poll with `wait`) and …/inbox/ack."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import ContextDep, PathId
from app.api.errors import responses
from app.domain import inbox
from app.schemas import InboxAck, InboxPage, InboxPosition

router = APIRouter(prefix="/api/agents", tags=["inbox"])


@router.get("/{agent_id}/inbox", response_model=InboxPage, responses=responses(403))
async def read_inbox(
    agent_id: PathId,
    ctx: ContextDep,
    after: Annotated[
        int | None,
        Query(
            ge=0,
            lt=2**63,
            description="Messages after this seq; default: the acknowledged position.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=inbox.MAX_LIMIT)] = 100,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=inbox.MAX_WAIT,
            allow_inf_nan=False,
            description="Seconds to wait for a message when none is there (long poll).",
        ),
    ] = 0,
) -> InboxPage:
    """Messages to the agent after a position, oldest first, with the cursor to read on from.
    Returns at once when any is there; else waits up to `wait` seconds for one. Reading marks
    nothing: acknowledge with POST …/inbox/ack."""
    return await inbox.read(ctx, agent_id, after, limit, wait)


@router.post("/{agent_id}/inbox/ack", response_model=InboxPosition, responses=responses(400, 403))
async def ack_inbox(agent_id: PathId, body: InboxAck, ctx: ContextDep) -> InboxPosition:
    """Record that the agent has handled its messages up to `up_to` (it only moves forward):
    a read without `after` starts there, after a restart too."""
    return await inbox.ack(ctx, agent_id, body.up_to)
