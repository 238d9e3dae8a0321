"""The ConnectionManager: every open connection of this node, its presence and its lifecycle.

It owns the hub (fan-out), agent presence, the idle sweeper, the counters behind /health and
/stats, and the drain on shutdown. The REST API, the bridge and the metrics task publish through
`ConnectionManager.publish`, the same path a client's `publish` takes.

What it needs from storage it gets at construction, as `StorageHooks` (app/runtime.py gives
the real ones): storing a WebSocket direct message, and hearing of presence changes. It also
is the domain layer's `Realtime` port (domain/context.py): publish, heartbeats, live agents.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any, Protocol

from app.core.config import Settings
from app.core.security import TokenCodec
from app.core.tasks import cancel_and_wait
from app.realtime.broker.base import Broker
from app.realtime.channels import agent_channel
from app.realtime.cluster import Cluster
from app.realtime.connection import Connection
from app.realtime.history import HistoryPage, StreamPosition
from app.realtime.hub import Hub, Subscribed
from app.realtime.permissions import Permissions
from app.realtime.presence import AgentPresence, ClientInfo, MemoryPresenceStore, PresenceStore
from app.realtime.protocol import CloseCode, ensure_encodable, now_ms
from app.realtime.publication import Publication
from app.realtime.stats import Stats
from app.realtime.waits import EventFilter, Waits, Watch

logger = logging.getLogger("context_manager.connections")


class StorageHooks(Protocol):
    """What the realtime core asks of storage, without knowing about tables."""

    async def store_direct_message(
        self, connection: Connection, to_agent: str, data: Any
    ) -> str | None:
        """Store a WebSocket `message.new` to `agents/{to_agent}` (delivered by the bridge);
        its message id, or None when nothing stores messages (then it is published)."""

    async def presence_changed(self, event: str, agent_id: str, data: dict[str, Any]) -> None:
        """agent.connected / agent.disconnected / agent.heartbeat was published. Must not
        wait on I/O: it runs on a connection's path."""


class NoStorage:
    """The hooks of a realtime core with no database: nothing is stored."""

    async def store_direct_message(
        self, connection: Connection, to_agent: str, data: Any
    ) -> str | None:
        return None

    async def presence_changed(self, event: str, agent_id: str, data: dict[str, Any]) -> None:
        return None


_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(number: int) -> str:
    digits = []
    while number:
        number, rest = divmod(number, 36)
        digits.append(_BASE36[rest])
    return "".join(reversed(digits)) or "0"


def new_client_id() -> str:
    """`ws_<time>_<random>` as in the seed's `ws_abc123_def456`: sortable and unguessable."""
    return f"ws_{_base36(time.time_ns() // 1_000_000)}_{secrets.token_hex(6)}"


class ConnectionManager:
    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        node_id: str,
        presence_store: PresenceStore | None = None,
        cluster: Cluster | None = None,
        hooks: StorageHooks | None = None,
    ) -> None:
        self.settings = settings
        self.node_id = node_id
        self.broker = broker
        self.stats = Stats()
        self.hub = Hub(broker, self.stats)
        self.waits = Waits(self.hub)
        self.permissions = Permissions()
        self.presence = AgentPresence(settings.heartbeat_interval)
        # With many nodes the cluster decides an agent's first/last connection anywhere (and
        # is the channel presence store); AgentPresence still counts this node's connections.
        self.cluster = cluster
        self.presence_store = presence_store or cluster or MemoryPresenceStore()
        self.connections: dict[str, Connection] = {}
        self.hooks: StorageHooks = hooks or NoStorage()
        self.tokens = TokenCodec(settings) if settings.auth_mode == "token" else None
        self._per_address: collections.Counter[str] = collections.Counter()
        self.draining = False
        self._sweeper: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self.broker.start(self.hub)
        if self.cluster is not None:
            await self.cluster.start(self)
        self._sweeper = asyncio.create_task(self._sweep_idle(), name="idle-sweeper")

    async def stop(self) -> None:
        await cancel_and_wait(self._sweeper)
        await self.presence_store.close()
        await self.broker.close()

    async def drain(
        self, code: int = CloseCode.SERVICE_RESTART, reason: str = "", reconnect_within: float = 0
    ) -> None:
        """Refuse new connections, flush and close every open one with `code`, in parallel.

        With `reconnect_within` (seconds) each client's close reason is ``reconnect:<ms>``, a
        random delay of its own: a restarted node's clients come back spread out, not at once.
        """
        self.draining = True
        timeout = self.settings.shutdown_timeout
        spread_ms = int(reconnect_within * 1000)
        closing = [
            c.close(
                code,
                f"reconnect:{random.randint(0, spread_ms)}"
                if spread_ms
                else reason or "server shutting down",
                timeout,
            )
            for c in self.connections.values()
        ]
        if closing:
            logger.info("closing %d connection(s) with %d", len(closing), code)
            await asyncio.gather(*closing, return_exceptions=True)

    def _due_closes(self) -> list[tuple[Connection, CloseCode, str]]:
        """Connections to close now: idle, never authenticated in time, or token expired."""
        settings = self.settings
        idle_before = time.monotonic() - settings.ws_idle_timeout
        now = time.time()
        due = []
        for connection in self.connections.values():
            if connection.close_code is not None:
                continue
            if connection.last_seen < idle_before:
                due.append((connection, CloseCode.IDLE_TIMEOUT, "idle timeout"))
            elif (
                not connection.authenticated
                and now - connection.connected_at > settings.auth_timeout
            ):
                due.append((connection, CloseCode.INVALID_TOKEN, "authentication timeout"))
            elif (
                connection.expires_at is not None
                and connection.expires_at + settings.jwt_leeway < now
            ):
                due.append((connection, CloseCode.TOKEN_EXPIRED, "token expired"))
        return due

    async def _sweep_idle(self) -> None:
        """Once a second (or faster for short timeouts): close what `_due_closes` finds."""
        period = min(1.0, self.settings.ws_idle_timeout / 4, self.settings.auth_timeout / 4)
        while True:
            await asyncio.sleep(period)
            for connection, code, reason in self._due_closes():
                connection.close_code = code
                asyncio.create_task(connection.close(code, reason, self.settings.shutdown_timeout))

    def admission(self, remote: str, origin: str | None, peers: int = 0) -> tuple[int, str] | None:
        """Why a new connection must be refused (close code, reason), or None.

        `peers`: the other connections of `remote` the server's transport holds, upgraded or
        not (transport.address_peers); this manager alone counts only upgraded ones.
        """
        settings = self.settings
        allowed = settings.allowed_origins
        if allowed and origin is not None and origin.rstrip("/") not in allowed:
            return CloseCode.FORBIDDEN, "origin not allowed"
        if len(self.connections) >= settings.max_connections:
            return CloseCode.CONNECTION_LIMIT, "too many connections"
        if max(self._per_address[remote], peers) >= settings.max_connections_per_ip:
            return CloseCode.CONNECTION_LIMIT, "too many connections from this address"
        return None

    # --- connections ----------------------------------------------------------------------

    async def connect(self, connection: Connection) -> None:
        self.connections[connection.client_id] = connection
        self._per_address[connection.remote] += 1
        self.stats.connections_opened += 1
        if connection.agent_id is not None:
            await self._agent_joined(connection)

    async def disconnect(self, connection: Connection, code: int | None) -> None:
        if self.connections.pop(connection.client_id, None) is None:
            return
        remaining = self._per_address[connection.remote] - 1
        if remaining > 0:
            self._per_address[connection.remote] = remaining
        else:
            del self._per_address[connection.remote]
        self.stats.connections_closed += 1
        final_code = connection.close_code if connection.close_code is not None else code
        if final_code is not None:
            self.stats.close_codes[final_code] += 1
        if connection.slow:
            self.stats.slow_consumers += 1
        channels = list(connection.subscriptions)
        await self.hub.remove(connection)
        for channel in channels:
            await self.presence_store.leave(channel, connection.client_id)
        if connection.agent_id is not None:
            await self._agent_left(connection.agent_id, connection, final_code)

    async def set_identity(
        self, connection: Connection, agent_id: str | None, session_id: str | None
    ) -> None:
        """Change who a connection speaks for (the `auth` message), keeping presence right."""
        changed_agent = agent_id is not None and agent_id != connection.agent_id
        if session_id is not None:
            connection.session_id = session_id
        if changed_agent:
            previous = connection.agent_id
            connection.agent_id = agent_id
            if previous is not None:
                await self._agent_left(previous, connection, None)
            await self._agent_joined(connection)
        if changed_agent or session_id is not None:
            info = self.client_info(connection)
            for channel in list(connection.subscriptions):
                await self.presence_store.join(channel, info)

    async def _agent_joined(self, connection: Connection) -> None:
        agent_id = connection.agent_id
        assert agent_id is not None
        if self.presence.add(agent_id) and await self._cluster_decides(agent_id, online=True):
            extra = {"connected_at": connection.connected_at}
            await self._publish_agent_event("agent.connected", agent_id, connection, extra)

    async def _agent_left(self, agent_id: str, connection: Connection, code: int | None) -> None:
        if self.presence.remove(agent_id) and await self._cluster_decides(agent_id, online=False):
            extra = {"close_code": code}
            await self._publish_agent_event("agent.disconnected", agent_id, connection, extra)

    async def _cluster_decides(self, agent_id: str, online: bool) -> bool:
        """First (last) on this node: is it the first (last) in the cluster too?"""
        cluster = self.cluster
        if cluster is None:
            return True
        try:
            if online:
                return await cluster.agent_online(agent_id)
            return await cluster.agent_offline(agent_id)
        except Exception:  # noqa: BLE001 - store down: decide locally, as one node would
            logger.warning("cluster presence unavailable for %s", agent_id, exc_info=True)
            return True

    async def heartbeat(self, connection: Connection) -> None:
        """A ping from an agent: publish agent.heartbeat, throttled per agent."""
        agent_id = connection.agent_id
        if agent_id is not None and self.presence.heartbeat_due(agent_id):
            await self._publish_agent_event("agent.heartbeat", agent_id, connection, {})

    async def agent_heartbeat(self, agent_id: str, session_id: str | None) -> None:
        """A heartbeat from outside a connection (REST, MCP): the same throttle and events."""
        if self.presence.heartbeat_due(agent_id):
            data = {"agent_id": agent_id, "session_id": session_id, "node_id": self.node_id}
            await self.announce_agent_event("agent.heartbeat", agent_id, data)

    async def live_connections(self) -> dict[str, int]:
        """Agent id → open connections: cluster-wide (nodes holding one) when clustered."""
        if self.cluster is not None:
            online = await self.cluster.online_agents()
            return {agent: len(nodes) for agent, nodes in online.items()}
        return self.presence.online()

    async def channel_history(
        self, channel: str, since: StreamPosition | None, limit: int
    ) -> HistoryPage:
        """A channel's retained publications after `since`, oldest first."""
        return await self.broker.history(channel, since, limit)

    def watch(
        self, channel: str, matches: EventFilter, timeout: float
    ) -> AbstractAsyncContextManager[Watch]:
        """Wait up to `timeout` (at most LONG_POLL_MAX) for a publication on `channel` whose
        event `matches`."""
        return self.waits.watch(channel, matches, min(timeout, self.settings.long_poll_max))

    async def channel_presence(self, channel: str) -> dict[str, ClientInfo]:
        """Client id → who is subscribed to `channel`, cluster-wide."""
        return await self.presence_store.members(channel)

    async def _publish_agent_event(
        self, event: str, agent_id: str, connection: Connection, extra: dict[str, Any]
    ) -> None:
        data = {
            "agent_id": agent_id,
            "session_id": connection.session_id,
            "client_id": connection.client_id,
            "node_id": self.node_id,
            **extra,
        }
        await self.announce_agent_event(event, agent_id, data)

    async def announce_agent_event(self, event: str, agent_id: str, data: dict[str, Any]) -> None:
        """Publish an agent.* event on `global` and the agent's channel; tell the listeners."""
        for channel in ("global", agent_channel(agent_id)):
            try:
                await self.publish(channel, event, data)
            except Exception:  # noqa: BLE001 - presence must not break a connection
                logger.exception("could not publish %s for %s", event, agent_id)
        try:
            await self.hooks.presence_changed(event, agent_id, data)
        except Exception:  # noqa: BLE001 - storage's failure must not break a connection
            logger.exception("presence hook failed on %s for %s", event, agent_id)

    # --- subscriptions --------------------------------------------------------------------

    async def subscribe(
        self,
        connection: Connection,
        channel: str,
        since: StreamPosition | None = None,
        on_subscribed: Callable[[Subscribed], None] | None = None,
    ) -> Subscribed:
        """Subscribe (recovering from `since`) and record the connection's channel presence.

        Presence is recorded first: the ack goes out from inside the hub's subscribe, and a
        client that asks `presence` right after its ack must find itself there.
        """
        already = channel in connection.subscriptions
        await self.presence_store.join(channel, self.client_info(connection))
        try:
            return await self.hub.subscribe(connection, channel, since, on_subscribed)
        except BaseException:
            if not already:
                await self.presence_store.leave(channel, connection.client_id)
            raise

    async def unsubscribe(self, connection: Connection, channel: str) -> bool:
        if not await self.hub.unsubscribe(connection, channel):
            return False
        await self.presence_store.leave(channel, connection.client_id)
        return True

    def client_info(self, connection: Connection) -> ClientInfo:
        return ClientInfo(
            connection.client_id,
            connection.agent_id,
            connection.session_id,
            connection.connected_at,
            self.node_id,
        )

    # --- publishing -----------------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        event: str,
        data: Any,
        timestamp: int | None = None,
        *,
        encodable: bool = False,
        idempotency_key: str | None = None,
    ) -> Publication:
        """Publish on a channel through the broker (all nodes). The channel must be valid.

        `encodable=True` vouches that `data` came from the JSON decoder under the protocol's
        nesting limit (a client's publish: the hot path); anything else is made encodable
        first, so a strange row written by raw SQL can never jam the bridge. With
        `idempotency_key`, a repeat of a key the channel accepted within its history TTL raises
        `DuplicatePublication` (broker/base.py) and publishes nothing.
        """
        if not encodable:
            data = ensure_encodable(data)
        publication = Publication(
            channel, event, data, timestamp if timestamp is not None else now_ms()
        )
        publication = await self.broker.publish(publication, idempotency_key)
        self.stats.publications += 1
        self.stats.publication_rate.mark()
        return publication

    # --- views ----------------------------------------------------------------------------

    def health(self, port: int) -> dict[str, Any]:
        """The seed's GET /health body, to the key."""
        channel_stats = self.hub.channel_stats()
        return {
            "status": "healthy" if self.broker.healthy and not self.draining else "degraded",
            "type": "websocket",
            "port": port,
            "connectedClients": len(self.connections),
            "activeChannels": len(channel_stats),
            "channelStats": channel_stats,
            "timestamp": datetime.now(UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
        }

    def snapshot(self) -> dict[str, Any]:
        """GET /stats: counters and the live view of this node."""
        stats = self.stats.snapshot()
        channel_stats = self.hub.channel_stats()
        stats["node_id"] = self.node_id
        stats["broker"] = {"kind": self.settings.broker_kind, "healthy": self.broker.healthy}
        stats["connections"]["current"] = len(self.connections)
        stats["subscriptions"]["current"] = sum(channel_stats.values())
        stats["channels"] = {"active": len(channel_stats), "subscribers": channel_stats}
        stats["agents_online"] = len(self.presence.online())
        if self.cluster is not None:
            stats["cluster"] = self.cluster.view()
        return stats
