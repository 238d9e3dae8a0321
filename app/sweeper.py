"""Message TTL: expire messages whose `expires_at` has passed, each exactly once.

Expiry is one UPDATE setting `expired_at` on rows where it is still NULL; the row's trigger
writes the one `message.expired` event and the bridge delivers it. Exactly once holds with
several processes on one database: the `expired_at IS NULL` condition is re-checked under the
row lock (PostgreSQL) or the write lock (SQLite), so a second sweeper finds nothing to update.
On PostgreSQL the sweep also takes a transaction-scoped advisory lock and skips its round when
another process holds it, so the processes do not queue behind each other's row locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.models import Message
from app.db.types import utcnow

logger = logging.getLogger("context_manager.sweeper")

SWEEP_LOCK = 0x636D7377  # "cmsw"
SWEEP_BATCH = 1000  # rows per transaction, so a backlog does not make one huge transaction


class MessageSweeper:
    def __init__(
        self, engine: AsyncEngine, interval: float, wake: Callable[[], None] | None = None
    ) -> None:
        self.engine = engine
        self.interval = interval
        self.wake = wake
        self.expired = 0  # messages this process expired
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="message-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the database may be back next round
                logger.exception("message sweep failed; retrying next round")
            await asyncio.sleep(self.interval)

    async def sweep(self) -> int:
        """Expire every due message; how many this call expired."""
        total = 0
        while True:
            count = await self._sweep_batch()
            total += count
            if count < SWEEP_BATCH:
                break
        if total:
            self.expired += total
            if self.wake is not None:
                self.wake()
        return total

    async def _sweep_batch(self) -> int:
        now = utcnow()
        table = Message.metadata.tables["messages"]
        due = (
            select(table.c.id)
            .where(table.c.expired_at.is_(None), table.c.expires_at <= now)
            .limit(SWEEP_BATCH)
            .scalar_subquery()
        )
        async with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                got = await connection.scalar(
                    text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": SWEEP_LOCK}
                )
                if not got:
                    return 0  # another process is sweeping right now
            result = await connection.execute(
                update(table)
                .where(table.c.id.in_(due), table.c.expired_at.is_(None))
                .values(expired_at=now)
            )
        return int(result.rowcount or 0)
