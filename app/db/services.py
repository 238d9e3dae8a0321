"""What the lifespan runs on the database, started and stopped in one fixed order.

    start: migrations (MIGRATE_ON_START) → agent recorder → bridge → TTL sweeper → metrics
    stop:  metrics → sweeper → bridge → agent recorder (final flush of the drain's disconnects)

It also gives the WebSocket endpoint its one narrow hook into storage:
`manager.message_store`, which stores a `message.new` published to `agents/{id}` so that the
trigger → outbox → bridge path delivers it (once) and the recipient can read it over REST.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import crud
from app.bridge import Bridge
from app.core.config import Settings
from app.db.agents import AgentRecorder
from app.db.migrate import migrate
from app.metrics import MetricsTask
from app.realtime.manager import ConnectionManager
from app.realtime.protocol import ErrorCode, ProtocolError
from app.schemas import check_json, clean_text
from app.sweeper import MessageSweeper

logger = logging.getLogger("context_manager.db")

MAX_TTL_SECONDS = 30 * 24 * 3600


class DataServices:
    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        sessionmaker: async_sessionmaker[AsyncSession],
        manager: ConnectionManager,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.sessionmaker = sessionmaker
        self.manager = manager
        self.agents = AgentRecorder(sessionmaker, settings.agent_flush_interval)
        self.bridge = Bridge(settings, engine, manager)
        self.sweeper = MessageSweeper(
            engine,
            settings.message_sweep_interval,
            self.bridge.wake,
            events_retention=settings.events_retention,
        )
        shared = settings.broker_kind != "memory"
        bridge = self.bridge
        self.metrics = MetricsTask(
            engine,
            manager,
            settings.metrics_interval,
            publishes=(lambda: bridge.leader) if shared else None,
        )
        self._started: list[Any] = []

    async def migrate(self) -> None:
        """Apply migrations when MIGRATE_ON_START (by default: on SQLite) says so."""
        if self.settings.migrates_on_start:
            await migrate(self.engine)

    async def start(self) -> None:
        await self.agents.start()
        self._started.append(self.agents)
        self.manager.presence_listeners.append(self.agents.on_presence)
        self.manager.message_store = self.store_message  # type: ignore[attr-defined]
        for part in (self.bridge, self.sweeper, self.metrics):
            await part.start()
            self._started.append(part)

    async def stop(self) -> None:
        """Stop in reverse order of start; every part is stopped even if one fails."""
        self.manager.message_store = None  # type: ignore[attr-defined]
        while self._started:
            part = self._started.pop()
            try:
                await part.stop()
            except Exception:  # noqa: BLE001 - keep stopping the others
                logger.exception("could not stop %s", type(part).__name__)
        if self.agents.on_presence in self.manager.presence_listeners:
            self.manager.presence_listeners.remove(self.agents.on_presence)

    async def store_message(
        self, from_agent: str, to_agent: str, session_id: str | None, data: Any
    ) -> str:
        """Store a WebSocket `message.new`; returns its id (the bridge delivers it)."""
        try:
            check_json(data)
            if isinstance(data, dict) and isinstance(data.get("content"), str):
                content = data["content"]
            else:
                content = orjson.dumps(data).decode()
            clean_text(content)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"Invalid message data: {exc}") from None
        ttl = data.get("ttl_seconds") if isinstance(data, dict) else None
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 < ttl <= MAX_TTL_SECONDS:
            ttl = None
        async with self.sessionmaker() as db:
            message = await crud.create_message(
                db,
                from_agent=from_agent,
                to_agent=to_agent,
                content=content,
                data=data,
                session_id=session_id,
                ttl_seconds=ttl,
                wake=self.bridge.wake,
            )
        return message.id
