"""POST /api/events: a server-side publish to any valid channel (Centrifugo's publish API)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ContextDep
from app.api.errors import responses
from app.domain import events
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
async def publish_event(body: EventPublish, ctx: ContextDep) -> EventPublished:
    """Publish `event` with `data` on `channel`; returns the publication's offset. An admin
    publishes anything; anyone else follows the WebSocket publish rules (no system events)."""
    return await events.publish_event(ctx, body.channel, body.event, body.data)
