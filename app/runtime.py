"""The composition root: every part one node runs, built from Settings, started in one order.

    build: engine → sessionmaker → group commit → agent recorder → broker, cluster
           → ConnectionManager(hooks=DatabaseHooks)  → bridge (woken by the sessionmaker's
           commits, app/db/engine.on_commit) → webhooks (woken likewise) → sweepers → metrics
    start: migrations (MIGRATE_ON_START) → manager (broker, cluster) → agent recorder → bridge
           → webhooks → TTL sweeper → lease and reservation expiry → metrics
    stop:  clients drained (1012) → metrics → expiry → sweeper → webhooks (writes the drain's
           agent.disconnected deliveries) → bridge → agent recorder (its final flush writes
           the drain's disconnects) → manager → group commit (its last writes) → engine

`app.main.lifespan` runs one `Runtime` for every surface of the process. The realtime core
gets what it needs from storage through `DatabaseHooks`, given at construction; the front
doors call the domain layer (app/domain/) with a `Context` made by `Runtime.context`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.bridge import Bridge
from app.core.config import Settings
from app.db.agents import AgentRecorder
from app.db.engine import create_engine, create_sessionmaker, on_commit
from app.db.group_commit import GroupCommit
from app.db.migrate import migrate, require_migrated
from app.db.models import Message
from app.db.shared_transaction import SharedTransaction
from app.domain import inbox, messages
from app.domain.context import Context
from app.domain.errors import DomainError
from app.metrics import MetricsTask
from app.realtime.broker import create_broker
from app.realtime.cluster import create_cluster
from app.realtime.connection import Connection
from app.realtime.manager import ConnectionManager
from app.realtime.permissions import Principal
from app.realtime.protocol import ErrorCode, ProtocolError
from app.sweeper import ExpirySweeper, MessageSweeper
from app.webhooks.service import Webhooks

logger = logging.getLogger("context_manager.runtime")

# Batches of the shared transaction in flight at once on PostgreSQL: a connection each, of
# the pool's ten (db/engine.py), the others left to reads and the group commit.
SHARED_WRITERS = 4

PresenceListener = Callable[[str, str, dict[str, Any]], Awaitable[None]]


class DatabaseHooks:
    """The ConnectionManager's `StorageHooks`: the WebSocket's way into the domain layer."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        agents: AgentRecorder,
        writes: GroupCommit,
        presence_listeners: list[PresenceListener] | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._agents = agents
        self._writes = writes
        # Others that hear of presence (webhooks): filled in once they are built.
        self.presence_listeners: list[PresenceListener] = presence_listeners or []

    async def store_direct_message(
        self, connection: Connection, to_agent: str, data: Any
    ) -> str | None:
        sender = connection.agent_id or connection.client_id
        try:
            return await messages.send_direct(self._writes, connection, sender, to_agent, data)
        except DomainError as exc:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, exc.message) from None

    async def presence_changed(self, event: str, agent_id: str, data: dict[str, Any]) -> None:
        await self._agents.on_presence(event, agent_id, data)
        for listener in self.presence_listeners:
            await listener(event, agent_id, data)


class Runtime:
    """One node's storage, realtime core and background tasks (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.node_id = settings.node_id or f"node-{secrets.token_hex(4)}"
        self.engine = create_engine(settings.database_url)
        self.sessionmaker = create_sessionmaker(self.engine)
        self.agents = AgentRecorder(self.sessionmaker, settings.agent_flush_interval)
        self.writes = GroupCommit(self.sessionmaker)
        self.writes.prepare(Message.metadata.tables["messages"], inbox.take_seqs)
        self.shared = SharedTransaction(
            self.sessionmaker,
            refusals=(DomainError,),
            writers=1 if self.engine.dialect.name == "sqlite" else SHARED_WRITERS,
        )
        hooks = DatabaseHooks(self.sessionmaker, self.agents, self.writes)
        self.manager = ConnectionManager(
            settings,
            create_broker(settings, self.node_id),
            self.node_id,
            cluster=create_cluster(settings, self.node_id),
            hooks=hooks,
        )
        self.bridge = Bridge(settings, self.engine, self.manager)
        on_commit(self.sessionmaker, self.bridge.wake)
        self.webhooks = Webhooks(settings, self.engine, self.manager)
        on_commit(self.sessionmaker, self.webhooks.wake)
        hooks.presence_listeners.append(self.webhooks.on_presence)
        self.sweeper = MessageSweeper(
            self.engine,
            settings.message_sweep_interval,
            self.bridge.wake,
            events_retention=settings.events_retention,
        )
        self.expiry = ExpirySweeper(self.sessionmaker, settings.lease_sweep_interval)
        bridge = self.bridge
        self.metrics = MetricsTask(
            self.engine,
            self.manager,
            settings.metrics_interval,
            # With a shared broker one node speaks for the cluster: the bridge's leader.
            publishes=(lambda: bridge.leader) if settings.broker_kind != "memory" else None,
        )
        self._started: list[Any] = []

    def context(self, actor: Principal) -> Context:
        """What a domain call needs, for one request of `actor`: enter it, and its session
        (opened on first use) is closed on exit."""
        return Context(
            actor, self.manager, self.agents, self.writes, self.shared, self.sessionmaker
        )

    async def start(self) -> None:
        if self.settings.migrates_on_start:
            await migrate(self.engine)
        else:
            await require_migrated(self.engine)
        await self.manager.start()
        self._started.append(self.manager)
        for part in (
            self.agents,
            self.bridge,
            self.webhooks,
            self.sweeper,
            self.expiry,
            self.metrics,
        ):
            await part.start()
            self._started.append(part)

    async def stop(self) -> None:
        """Drain the clients, then stop in reverse order; every part is stopped."""
        if not self.manager.draining:
            await self.manager.drain()
        while self._started:
            part = self._started.pop()
            try:
                await part.stop()
            except Exception:  # noqa: BLE001 - keep stopping the others
                logger.exception("could not stop %s", type(part).__name__)
        await self.writes.close()
        await self.shared.close()
        await self.engine.dispose()
