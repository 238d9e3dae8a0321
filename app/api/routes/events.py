"""POST /api/events: a server-side publish to any valid channel (Centrifugo's publish API)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.auth import IdentityDep
from app.api.deps import ManagerDep
from app.api.errors import ApiError, invalid, responses
from app.realtime.channels import check_event, parse_channel
from app.realtime.permissions import may_publish
from app.realtime.protocol import ProtocolError
from app.schemas import EventPublish, EventPublished

router = APIRouter(prefix="/api/events", tags=["events"])

_INVALID_EXAMPLE = {
    "detail": [{"loc": ["body", "channel"], "msg": "Invalid channel", "type": "INVALID_CHANNEL"}],
    "code": "INVALID_CHANNEL",
}


@router.post(
    "",
    response_model=EventPublished,
    responses={
        **responses(400),
        403: {"description": "The caller's role may not publish this event on this channel."},
        422: {
            "description": "Invalid body; a channel or event outside the grammar carries the "
            "WebSocket protocol's code (INVALID_CHANNEL, INVALID_EVENT).",
            "content": {"application/json": {"example": _INVALID_EXAMPLE}},
        },
    },
)
async def publish_event(body: EventPublish, manager: ManagerDep, identity: IdentityDep) -> Any:
    """Publish `event` with `data` on `channel`; returns the publication's offset."""
    try:
        channel = parse_channel(body.channel)
    except ProtocolError as exc:
        return _invalid("channel", exc)
    try:
        event = check_event(body.event)
    except ProtocolError as exc:
        return _invalid("event", exc)
    if not may_publish(identity, channel, event, server_api=True):
        raise ApiError(403, "FORBIDDEN", f"Not allowed to publish {event} on {channel.name}")
    publication = await manager.publish(channel.name, event, body.data)
    return EventPublished(
        channel=channel.name,
        event=event,
        offset=publication.offset,
        timestamp=publication.timestamp,
    )


def _invalid(field: str, exc: ProtocolError) -> JSONResponse:
    return invalid(("body", field), exc.message, exc.code.value)
