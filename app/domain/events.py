"""The server publish API (`POST /api/events`, Centrifugo's publish): an event on any channel.

An admin publishes anything, system events included (it speaks for the server). Anyone else
follows the WebSocket publish rules of app/realtime/permissions.py, which never let a client
emit an event the server emits (`task.*`, `message.*`, `agent.*`, …).
"""

from __future__ import annotations

from typing import Any

from app.core.security import Role
from app.domain import access
from app.domain.context import Context
from app.domain.errors import Forbidden, Invalid
from app.realtime.channels import check_event, parse_channel
from app.realtime.permissions import may_publish
from app.realtime.protocol import ProtocolError
from app.schemas import EventPublished


async def publish_event(ctx: Context, channel_name: str, event: str, data: Any) -> EventPublished:
    """Publish `event` with `data` on a channel; returns the publication's place."""
    access.require_writer(ctx.actor)
    try:
        channel = parse_channel(channel_name)
    except ProtocolError as exc:
        raise Invalid(exc.message, exc.code.value, ("body", "channel")) from None
    try:
        event = check_event(event)
    except ProtocolError as exc:
        raise Invalid(exc.message, exc.code.value, ("body", "event")) from None
    actor = ctx.actor
    if not may_publish(actor, channel, event, server_api=actor.role is Role.ADMIN):
        raise Forbidden(f"Not allowed to publish {event} on {channel.name}")
    publication = await ctx.realtime.publish(channel.name, event, data)
    return EventPublished(
        channel=channel.name,
        event=event,
        offset=publication.offset,
        timestamp=publication.timestamp,
    )
