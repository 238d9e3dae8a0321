"""The one place where channel permissions are decided.

Every subscribe and publish, from a client or from the server, asks here. In the seed's open
protocol any connected client may subscribe to and publish on any valid channel; the token
auth mode narrows this table (docs/security.md).
"""

from __future__ import annotations

from app.realtime.channels import Channel
from app.realtime.connection import Connection


class Permissions:
    def check_subscribe(self, connection: Connection, channel: Channel) -> None:
        """Raise ProtocolError(FORBIDDEN) when `connection` may not subscribe to `channel`."""

    def check_publish(self, connection: Connection, channel: Channel, event: str) -> None:
        """Raise ProtocolError(FORBIDDEN) when `connection` may not publish `event` there."""
