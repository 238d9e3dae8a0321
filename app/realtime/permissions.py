"""The one place where channel permissions are decided (docs/security.md has the table).

| channel            | subscribe (and history, presence)          | publish                      |
|--------------------|--------------------------------------------|------------------------------|
| global, metrics    | anyone authenticated                       | admin (and the server)       |
| agents/{id}        | agent {id}, dashboard, admin               | anyone authenticated         |
| sessions/{id}      | agents of session {id}, dashboard, admin   | same as subscribe            |
| topics/{name}      | anyone authenticated                       | anyone authenticated         |

System events (task.*, subtask.*, agent.*, metric.*, message.*) are the
server's: no WebSocket client may publish them anywhere. Over REST (`POST /api/events`, the
server publish API) an admin may. In open mode a connection's identity is what it claims
(agent role with an agent_id, dashboard role without), and REST callers act as the server.
"""

from __future__ import annotations

from typing import Protocol

from app.core.security import Role
from app.realtime.channels import Channel, ChannelKind
from app.realtime.connection import Connection
from app.realtime.protocol import ErrorCode, ProtocolError

SYSTEM_EVENT_PREFIXES = ("task.", "subtask.", "agent.", "metric.")
SYSTEM_EVENTS = frozenset({"message.new", "message.read", "message.expired"})
_PRIVILEGED = (Role.DASHBOARD, Role.ADMIN)


def is_system_event(event: str) -> bool:
    return event.startswith(SYSTEM_EVENT_PREFIXES) or event in SYSTEM_EVENTS


def _forbidden(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.FORBIDDEN, message)


class Principal(Protocol):
    """Who asks: an `Identity` (REST) or a `Connection` itself (WebSocket, no allocation)."""

    @property
    def agent_id(self) -> str | None: ...

    @property
    def session_id(self) -> str | None: ...

    @property
    def role(self) -> Role: ...


def may_subscribe(identity: Principal, channel: Channel) -> bool:
    kind = channel.kind
    if kind is ChannelKind.AGENT:
        return identity.role in _PRIVILEGED or identity.agent_id == channel.id
    if kind is ChannelKind.SESSION:
        return identity.role in _PRIVILEGED or (
            identity.session_id is not None and identity.session_id == channel.id
        )
    return True


def may_publish(identity: Principal, channel: Channel, event: str, *, server_api: bool) -> bool:
    if is_system_event(event):
        return server_api and identity.role is Role.ADMIN
    kind = channel.kind
    if kind in (ChannelKind.GLOBAL, ChannelKind.METRICS):
        return identity.role is Role.ADMIN
    if kind is ChannelKind.SESSION:
        return may_subscribe(identity, channel)
    return True


class Permissions:
    """Checks for WebSocket connections; REST uses may_subscribe / may_publish directly."""

    def check_subscribe(self, connection: Connection, channel: Channel) -> None:
        """Raise FORBIDDEN when `connection` may not subscribe to (or read) `channel`."""
        if not may_subscribe(connection, channel):
            raise _forbidden(f"Not allowed to subscribe to {channel.name}")

    def check_publish(self, connection: Connection, channel: Channel, event: str) -> None:
        """Raise FORBIDDEN when `connection` may not publish `event` on `channel`."""
        if is_system_event(event):
            raise _forbidden(f"'{event}' is a system event: only the server publishes it")
        if not may_publish(connection, channel, event, server_api=False):
            raise _forbidden(f"Not allowed to publish on {channel.name}")
