"""GET /api/channels/{channel}/history and …/presence: the WebSocket requests, over REST."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from app.api.deps import ContextDep
from app.domain import channels
from app.domain.channels import HISTORY_LIMIT
from app.domain.errors import Invalid
from app.realtime.history import StreamPosition
from app.schemas import CHANNEL_PATTERN, PlainError

router = APIRouter(prefix="/api/channels", tags=["channels"])

# The grammar is documented (derived from the registry of kinds) but checked by the domain
# (domain/channels.readable),
# which answers the protocol's INVALID_CHANNEL rather than a generic pattern mismatch.
ChannelPath = Annotated[
    str,
    Path(
        examples=["agents/backend-laravel"],
        json_schema_extra={"pattern": CHANNEL_PATTERN, "maxLength": 160},
    ),
]


class PublicationOut(BaseModel):
    channel: str
    event: str
    data: Any = None
    timestamp: int = Field(description="Milliseconds since the Unix epoch.")
    offset: int
    epoch: str


class HistoryOut(BaseModel):
    channel: str
    offset: int = Field(description="The stream's current top offset.")
    epoch: str
    recovered: bool = Field(description="False when `since` is no longer covered.")
    publications: list[PublicationOut]

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "channel": "agents/backend-laravel",
                    "offset": 2,
                    "epoch": "9f1c2ab4",
                    "recovered": True,
                    "publications": [
                        {
                            "channel": "agents/backend-laravel",
                            "event": "task.created",
                            "data": {"task_id": "task_1f", "status": "pending"},
                            "timestamp": 1795781150000,
                            "offset": 2,
                            "epoch": "9f1c2ab4",
                        }
                    ],
                }
            ]
        }
    }


class PresenceMember(BaseModel):
    client_id: str
    agent_id: str | None
    session_id: str | None
    connected_at: float
    node_id: str


class PresenceOut(BaseModel):
    channel: str
    num_clients: int
    num_agents: int
    presence: dict[str, PresenceMember]


_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"description": "The caller may not read this channel."},
    # `{channel:path}` matches any character but a line feed: such a path reaches no route.
    404: {"model": PlainError, "description": "No route: the channel has a line feed (%0A)."},
    422: {"description": "Invalid channel (INVALID_CHANNEL) or query."},
}


@router.get("/{channel:path}/history", response_model=HistoryOut, responses=_ERRORS)
async def channel_history(
    channel: ChannelPath,
    ctx: ContextDep,
    since_offset: Annotated[int | None, Query(ge=0, lt=2**63)] = None,
    # No NUL: the PostgreSQL broker compares it in SQL, and PostgreSQL text holds none.
    since_epoch: Annotated[str | None, Query(max_length=64, pattern=r"^[^\x00]*$")] = None,
    limit: Annotated[int, Query(ge=1, le=HISTORY_LIMIT)] = HISTORY_LIMIT,
) -> Any:
    """Retained publications of a channel, oldest first; page on with `since_offset`."""
    since = None
    if since_offset is not None or since_epoch is not None:
        if since_offset is None or since_epoch is None:
            raise Invalid("since_offset and since_epoch go together", "INVALID_MESSAGE", ("query",))
        since = StreamPosition(since_offset, since_epoch)
    readable, page = await channels.read_history(ctx, channel, since, limit)
    return channels.history_out(readable, page)


@router.get("/{channel:path}/presence", response_model=PresenceOut, responses=_ERRORS)
async def channel_presence(channel: ChannelPath, ctx: ContextDep) -> Any:
    """Who is subscribed to a channel across the cluster, with counts."""
    return await channels.presence(ctx, channel)
