"""GET /api/channels/{channel}/history and …/presence: the WebSocket requests, over REST."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.api.auth import IdentityDep
from app.api.deps import ManagerDep
from app.api.errors import ApiError
from app.api.schemas import PlainError
from app.realtime.channels import Channel, parse_channel
from app.realtime.history import StreamPosition
from app.realtime.permissions import may_subscribe
from app.realtime.presence import presence_stats
from app.realtime.protocol import ProtocolError

router = APIRouter(prefix="/api/channels", tags=["channels"])

HISTORY_LIMIT = 1000


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


def _readable(channel_name: str, identity: Any) -> Channel:
    try:
        channel = parse_channel(channel_name)
    except ProtocolError as exc:
        raise ApiError(422, exc.code.value, exc.message) from None
    if not may_subscribe(identity, channel):
        raise ApiError(403, "FORBIDDEN", f"Not allowed to read {channel.name}")
    return channel


_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"description": "The caller may not read this channel."},
    # `{channel:path}` matches any character but a line feed: such a path reaches no route.
    404: {"model": PlainError, "description": "No route: the channel has a line feed (%0A)."},
    422: {"description": "Invalid channel (INVALID_CHANNEL) or query."},
}


@router.get("/{channel:path}/history", response_model=HistoryOut, responses=_ERRORS)
async def channel_history(
    channel: str,
    manager: ManagerDep,
    identity: IdentityDep,
    since_offset: Annotated[int | None, Query(ge=0, lt=2**63)] = None,
    # No NUL: the PostgreSQL broker compares it in SQL, and PostgreSQL text holds none.
    since_epoch: Annotated[str | None, Query(max_length=64, pattern=r"^[^\x00]*$")] = None,
    limit: Annotated[int, Query(ge=1, le=HISTORY_LIMIT)] = HISTORY_LIMIT,
) -> Any:
    """Retained publications of a channel, oldest first; page on with `since_offset`."""
    readable = _readable(channel, identity)
    since = None
    if since_offset is not None or since_epoch is not None:
        if since_offset is None or since_epoch is None:
            raise ApiError(422, "INVALID_MESSAGE", "since_offset and since_epoch go together")
        since = StreamPosition(since_offset, since_epoch)
    page = await manager.broker.history(readable.name, since, limit)
    return {
        "channel": readable.name,
        **page.position.as_dict(),
        "recovered": page.recoverable,
        "publications": [
            {
                "channel": p.channel,
                "event": p.event,
                "data": p.data,
                "timestamp": p.timestamp,
                "offset": p.offset,
                "epoch": p.epoch,
            }
            for p in page.publications
        ],
    }


@router.get("/{channel:path}/presence", response_model=PresenceOut, responses=_ERRORS)
async def channel_presence(channel: str, manager: ManagerDep, identity: IdentityDep) -> Any:
    """Who is subscribed to a channel across the cluster, with counts."""
    readable = _readable(channel, identity)
    members = await manager.presence_store.members(readable.name)
    return {
        "channel": readable.name,
        **presence_stats(members),
        "presence": {client_id: info.as_dict() for client_id, info in members.items()},
    }
