"""Agents in the database follow the WebSocket: upserted on connect, offline on last close,
and `last_seen` written in batches — never one write per ping.

`AgentRecorder.on_presence` is registered in `ConnectionManager.presence_listeners`; it only
updates a dict and returns, so a connection never waits for the database. A background task
flushes the dict: at once (after a short debounce) when an agent's status changed, otherwise
every AGENT_FLUSH_INTERVAL seconds, all pending agents in one transaction. REST heartbeats go
through the same batch (`touch`); reads merge the pending value, so they never look stale.

With several processes, the last connection closing on one node marks the agent offline even
if it is connected to another; GET /api/agents also reports live connections of the node
answering. Cluster-wide presence belongs to the shared broker.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.tasks import cancel_and_wait, uninterrupted, wait_event
from app.db.models import Agent, AgentStatus
from app.db.types import utcnow

logger = logging.getLogger("context_manager.agents")

DEBOUNCE = 0.05  # coalesce a burst of connects into one write


@dataclass(slots=True)
class _Pending:
    last_seen: datetime
    status: str | None = None  # None: only last_seen changed
    create: bool = False  # insert the agent (offline) if it is not there yet


class AgentRecorder:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], interval: float) -> None:
        self._sessionmaker = sessionmaker
        self._interval = interval
        self._pending: dict[str, _Pending] = {}
        self._urgent = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.flushes = 0
        self.rows_written = 0

    # --- inputs (no I/O) ------------------------------------------------------------------

    async def on_presence(self, event: str, agent_id: str, data: dict[str, Any]) -> None:
        """The ConnectionManager's presence listener."""
        now = utcnow()
        pending = self._pending.get(agent_id)
        if pending is None:
            pending = self._pending[agent_id] = _Pending(now)
        pending.last_seen = now
        if event == "agent.connected":
            pending.status = AgentStatus.ONLINE.value
            self._urgent.set()
        elif event == "agent.disconnected":
            pending.status = AgentStatus.OFFLINE.value
            self._urgent.set()

    def touch(self, agent_id: str, create: bool = False) -> datetime:
        """A REST heartbeat or an agent's request: last_seen = now, written with the next
        batch; with `create`, an agent never seen before is inserted (offline)."""
        now = utcnow()
        pending = self._pending.get(agent_id)
        if pending is None:
            self._pending[agent_id] = _Pending(now, create=create)
        else:
            pending.last_seen = now
            pending.create = pending.create or create
        return now

    def last_seen(self, agent_id: str, stored: datetime | None) -> datetime | None:
        """The newer of the stored last_seen and one waiting to be written."""
        pending = self._pending.get(agent_id)
        if pending is None:
            return stored
        if stored is None or pending.last_seen > stored:
            return pending.last_seen
        return stored

    # --- the writer -----------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="agent-recorder")

    async def stop(self) -> None:
        """Stop the task, then write what is pending (disconnects of the drain included)."""
        await cancel_and_wait(self._task)
        self._task = None
        try:
            await self.flush()
        except Exception:  # noqa: BLE001 - shutting down: log, do not mask the real exit
            logger.exception("final flush of agents failed")

    async def _run(self) -> None:
        while True:
            if await wait_event(self._urgent, self._interval):
                await asyncio.sleep(DEBOUNCE)
            self._urgent.clear()
            try:
                await uninterrupted(self.flush())
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the database may be back next time
                logger.exception("could not write agents' presence; will retry")
                await asyncio.sleep(min(self._interval, 1.0))

    async def flush(self) -> None:
        """Write every pending agent in one transaction."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            await self._write(batch)
        except BaseException:
            # Put it back unless something newer arrived meanwhile.
            for agent_id, pending in batch.items():
                newer = self._pending.get(agent_id)
                if newer is None:
                    self._pending[agent_id] = pending
                else:
                    if newer.status is None:
                        newer.status = pending.status
                    newer.create = newer.create or pending.create
            raise
        self.flushes += 1
        self.rows_written += len(batch)

    async def _write(self, batch: dict[str, _Pending]) -> None:
        now = utcnow()
        async with self._sessionmaker() as db:
            dialect = db.get_bind().dialect.name
            insert = pg_insert if dialect == "postgresql" else sqlite_insert
            with_status = [
                {
                    "id": agent_id,
                    "status": p.status,
                    "last_seen": p.last_seen,
                    "created_at": now,
                    "updated_at": now,
                }
                for agent_id, p in batch.items()
                if p.status is not None
            ]
            if with_status:
                statement = insert(Agent.metadata.tables["agents"])
                await db.execute(
                    statement.on_conflict_do_update(
                        index_elements=["id"],
                        set_={
                            "status": statement.excluded.status,
                            "last_seen": statement.excluded.last_seen,
                            "updated_at": statement.excluded.updated_at,
                        },
                    ),
                    with_status,
                )
            created = [
                {
                    "id": agent_id,
                    "status": AgentStatus.OFFLINE.value,
                    "last_seen": p.last_seen,
                    "created_at": now,
                    "updated_at": now,
                }
                for agent_id, p in batch.items()
                if p.status is None and p.create
            ]
            if created:
                statement = insert(Agent.metadata.tables["agents"])
                await db.execute(
                    statement.on_conflict_do_update(
                        index_elements=["id"], set_={"last_seen": statement.excluded.last_seen}
                    ),
                    created,
                )
            seen_only = [
                {"agent_id": agent_id, "seen": p.last_seen}
                for agent_id, p in batch.items()
                if p.status is None and not p.create
            ]
            if seen_only:
                table = Agent.metadata.tables["agents"]
                await db.execute(
                    update(table)
                    .where(table.c.id == bindparam("agent_id"))
                    .values(last_seen=bindparam("seen")),
                    seen_only,
                )
            await db.commit()
