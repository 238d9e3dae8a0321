"""Channel permissions, derived from the channel-kind registry and the server's events.

Each kind's rules live with the kind (`ChannelKind` in channels.py); the events reserved to the
server come from the resources that emit them (app/events.py). This module applies both, for
REST (`may_subscribe`, `may_publish`: pure functions of a principal and a parsed channel) and
for WebSocket connections (`Permissions`, which raises FORBIDDEN with a reason). A reserved
event may be published over REST (`POST /api/events`, the server publish API) by an admin, and
by no WebSocket client. In open mode a connection's identity is what it claims (agent role with
an agent_id, dashboard role without), and REST callers act as the server.

`python -m app.realtime.permissions` prints the table of docs/security.md.
"""

from __future__ import annotations

from app.core.security import Role
from app.events import is_reserved, reserved_summary
from app.events import is_reserved as is_system_event
from app.realtime.channels import Channel, ChannelKind, Principal
from app.realtime.connection import Connection
from app.realtime.protocol import ErrorCode, ProtocolError

__all__ = [
    "Permissions",
    "Principal",
    "is_system_event",
    "may_publish",
    "may_subscribe",
    "permission_table",
]


def _reserved_on(channel: Channel, event: str) -> bool:
    return channel.kind.reserves_server_events and is_reserved(event)


def may_subscribe(identity: Principal, channel: Channel) -> bool:
    """Whether `identity` may subscribe to `channel` (and read its history and presence)."""
    return channel.kind.subscribe.allows(identity, channel)


def may_publish(identity: Principal, channel: Channel, event: str, *, server_api: bool) -> bool:
    """Whether `identity` may publish `event` on `channel`; `server_api` for POST /api/events."""
    if _reserved_on(channel, event):
        return server_api and identity.role is Role.ADMIN
    return channel.kind.publish.allows(identity, channel)


def _forbidden(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.FORBIDDEN, message)


class Permissions:
    """Checks for WebSocket connections; REST uses may_subscribe / may_publish directly."""

    def check_subscribe(self, connection: Connection, channel: Channel) -> None:
        """Raise FORBIDDEN when `connection` may not subscribe to (or read) `channel`."""
        if not may_subscribe(connection, channel):
            raise _forbidden(f"Not allowed to subscribe to {channel.name}")

    def check_publish(self, connection: Connection, channel: Channel, event: str) -> None:
        """Raise FORBIDDEN when `connection` may not publish `event` on `channel`."""
        if _reserved_on(channel, event):
            raise _forbidden(f"'{event}' is a system event: only the server publishes it")
        if not channel.kind.publish.allows(connection, channel):
            raise _forbidden(f"Not allowed to publish on {channel.name}")


def permission_table() -> str:
    """The permission table of docs/security.md, rendered from the registry."""
    lines = [
        "| channel | subscribe, `history`, `presence` | publish |",
        "|---|---|---|",
    ]
    for kind in ChannelKind:
        lines.append(f"| `{kind.pattern}` | {kind.subscribe.text} | {kind.publish.text} |")
    reserved = [kind for kind in ChannelKind if kind.reserves_server_events]
    where = (
        "any channel"
        if len(reserved) == len(ChannelKind)
        else "channels of " + ", ".join(f"`{kind.pattern}`" for kind in reserved)
    )
    lines += [
        "",
        f"System events — {reserved_summary()} —",
        "are published by the server only (app/events.py declares them, by the resource that",
        f"emits them): a WebSocket client gets `FORBIDDEN` on {where} and nothing is delivered.",
        "Over REST (`POST /api/events`, the server publish API) an admin may publish them.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(permission_table(), end="")
