"""Reading a channel outside a WebSocket: its retained history and its presence.

The channel rules are the WebSocket's (permissions.may_subscribe): whoever may subscribe may
read the history and see who is there.
"""

from __future__ import annotations

from typing import Any

from app.domain.context import Context
from app.domain.errors import Forbidden, Invalid
from app.realtime.channels import Channel, parse_channel
from app.realtime.history import HistoryPage, StreamPosition
from app.realtime.permissions import may_subscribe
from app.realtime.presence import presence_stats
from app.realtime.protocol import ProtocolError

HISTORY_LIMIT = 1000


def readable(ctx: Context, channel_name: str) -> Channel:
    """The channel, if the actor may read it."""
    try:
        channel = parse_channel(channel_name)
    except ProtocolError as exc:
        raise Invalid(exc.message, exc.code.value, ("path", "channel")) from None
    if not may_subscribe(ctx.actor, channel):
        raise Forbidden(f"Not allowed to read {channel.name}")
    return channel


async def read_history(
    ctx: Context,
    channel_name: str,
    since: StreamPosition | None = None,
    limit: int = HISTORY_LIMIT,
) -> tuple[Channel, HistoryPage]:
    """Retained publications after `since`, oldest first (page on with the last offset)."""
    channel = readable(ctx, channel_name)
    return channel, await ctx.realtime.channel_history(channel.name, since, limit)


async def presence(ctx: Context, channel_name: str) -> dict[str, Any]:
    """Who is subscribed to a channel across the cluster, with counts."""
    channel = readable(ctx, channel_name)
    members = await ctx.realtime.channel_presence(channel.name)
    return {
        "channel": channel.name,
        **presence_stats(members),
        "presence": {client_id: info.as_dict() for client_id, info in members.items()},
    }


def history_out(channel: Channel, page: HistoryPage) -> dict[str, Any]:
    """A history read as every door answers it (REST's HistoryOut, MCP's read_channel)."""
    return {
        "channel": channel.name,
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
