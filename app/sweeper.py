"""Periodic clean-up on the database: message TTL (each expiry exactly once), outbox pruning,
and the expiry of task leases and path reservations (`ExpirySweeper`).

Expiry is one UPDATE setting `expired_at` on rows where it is still NULL; the row's trigger
writes the one `message.expired` event and the bridge delivers it. Exactly once holds with
several processes on one database: the `expired_at IS NULL` condition is re-checked under the
row lock (PostgreSQL) or the write lock (SQLite), so a second sweeper finds nothing to update.
On PostgreSQL the sweep also takes a transaction-scoped advisory lock and skips its round when
another process holds it, so the processes do not queue behind each other's row locks.

Outbox retention: every PRUNE_INTERVAL seconds, rows of `events` older than EVENTS_RETENTION
that every bridge has already published and the webhook fan-out has read (id at or below the
lowest `bridge_cursor.last_id` and `webhook_cursor.last_id`) are deleted, PRUNE_BATCH rows per
transaction, under an advisory lock of their own on PostgreSQL (one process prunes at a time;
the others skip). A cursor not updated for longer than the retention belongs to a reader gone
for that long (a reader that keeps up moves its cursor within a poll of every new event; one
that is idle has nothing newer to hold back), so it does not hold rows past the retention. Ids
are never reused after a delete (a PostgreSQL sequence; AUTOINCREMENT on SQLite), so a reader
of `id > last_id` is unaffected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app.core.tasks import cancel_and_wait, uninterrupted
from app.db.models import (
    IDEMPOTENCY_TTL,
    BridgeCursor,
    Event,
    IdempotencyKey,
    Message,
    WebhookCursor,
    WebhookEndpoint,
)
from app.db.types import utcnow
from app.domain import claims, reservations

logger = logging.getLogger("context_manager.sweeper")

SWEEP_LOCK = 0x636D7377  # "cmsw"
PRUNE_LOCK = 0x636D7072  # "cmpr"
EXPIRY_LOCK = 0x636D6C65  # "cmle": leases and reservations
SWEEP_BATCH = 1000  # rows per transaction, so a backlog does not make one huge transaction
PRUNE_BATCH = 5000
PRUNE_INTERVAL = 60.0  # seconds between outbox prunings; retention is counted in days


async def _try_lock(connection: AsyncConnection, key: int) -> bool:
    """On PostgreSQL, a transaction-scoped advisory lock or False; always True elsewhere."""
    if connection.dialect.name != "postgresql":
        return True
    got = await connection.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key})
    return bool(got)


async def _round(step: Callable[[], Awaitable[object]], what: str) -> None:
    """One round of a sweeper: a failure is logged, and the next round tries again."""
    try:
        await uninterrupted(step())
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - the database may be back next round
        logger.exception("%s failed; retrying next round", what)


class MessageSweeper:
    def __init__(
        self,
        engine: AsyncEngine,
        interval: float,
        wake: Callable[[], None] | None = None,
        events_retention: float | None = None,
        prune_interval: float = PRUNE_INTERVAL,
        prune_batch: int = PRUNE_BATCH,
    ) -> None:
        self.engine = engine
        self.interval = interval
        self.wake = wake
        self.events_retention = events_retention
        self.prune_interval = prune_interval
        self.prune_batch = prune_batch
        self.expired = 0  # messages this process expired
        self.pruned = 0  # outbox rows this process deleted
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="message-sweeper")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        next_prune = time.monotonic()
        while True:
            await _round(self.sweep, "message sweep")
            if self.events_retention is not None and time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.prune_interval
                await _round(self.prune_events, "outbox pruning")
            await asyncio.sleep(self.interval)

    # --- message TTL ----------------------------------------------------------------------

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
            if not await _try_lock(connection, SWEEP_LOCK):
                return 0  # another process is sweeping right now
            result = await connection.execute(
                update(table)
                .where(table.c.id.in_(due), table.c.expired_at.is_(None))
                .values(expired_at=now)
            )
        return int(result.rowcount or 0)

    # --- outbox retention -----------------------------------------------------------------

    async def prune_events(self, now: datetime | None = None) -> int:
        """Delete outbox rows past the retention that every bridge has published; how many."""
        if self.events_retention is None:
            return 0
        cutoff = (now or utcnow()) - timedelta(seconds=self.events_retention)
        total = 0
        while True:
            count = await self._prune_batch(cutoff)
            total += count
            if count < self.prune_batch:
                break
        if total:
            self.pruned += total
            logger.info("pruned %d outbox rows older than %s", total, cutoff.isoformat())
        return total

    async def _prune_batch(self, cutoff: datetime) -> int:
        async with self.engine.begin() as connection:
            if not await _try_lock(connection, PRUNE_LOCK):
                return 0  # another process is pruning
            # Every reader of the outbox holds back what it has not read: the bridges and the
            # webhook fan-out (a cursor idle past the retention belongs to a reader gone). The
            # fan-out only while an endpoint is enabled: its cursor lags while none is, and an
            # endpoint registered or enabled later starts at the outbox head, owed nothing older.
            doomed = select(Event.id).where(Event.created_at < cutoff)
            readers: list[Any] = [BridgeCursor]
            if await connection.scalar(
                select(WebhookEndpoint.id).where(WebhookEndpoint.enabled.is_(True)).limit(1)
            ):
                readers.append(WebhookCursor)
            for cursor in readers:
                behind = await connection.scalar(
                    select(func.min(cursor.last_id)).where(cursor.updated_at >= cutoff)
                )
                if behind is not None:
                    doomed = doomed.where(Event.id <= behind)
            result = await connection.execute(
                delete(Event).where(
                    Event.id.in_(
                        doomed.order_by(Event.id).limit(self.prune_batch).scalar_subquery()
                    )
                )
            )
        return int(result.rowcount or 0)


class ExpirySweeper:
    """Leases and reservations past their time, ended by one process at a time.

    Every LEASE_SWEEP_INTERVAL seconds: expired leases send their tasks back to pending (or
    fail them on their last attempt; task.lease_expired) and expired reservations are marked
    (reservation.expired), each in a transaction holding EXPIRY_LOCK on PostgreSQL so that
    the nodes of a cluster do not race each other (the rows' compare-and-set makes a second
    sweeper harmless anyway; the lock saves it the work). The commits wake the bridge.
    """

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], interval: float) -> None:
        self.sessionmaker = sessionmaker
        self.interval = interval
        self.leases_expired = 0
        self.reservations_expired = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="expiry-sweeper")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await _round(self.sweep, "lease and reservation expiry")
            await asyncio.sleep(self.interval)

    async def sweep(self) -> tuple[int, int]:
        """End what is due now; (leases, reservations) ended by this call."""
        leases = done = 0
        async with self.sessionmaker() as db:
            if await _try_lock(await db.connection(), EXPIRY_LOCK):
                leases = await claims.expire_leases(db)
        async with self.sessionmaker() as db:
            if await _try_lock(await db.connection(), EXPIRY_LOCK):
                done = await reservations.expire(db)
        async with self.sessionmaker() as db:
            # Idempotency keys past their 24 hours (api/idempotency.py ignores them already).
            await db.execute(
                delete(IdempotencyKey).where(IdempotencyKey.created_at < utcnow() - IDEMPOTENCY_TTL)
            )
            await db.commit()
        self.leases_expired += leases
        self.reservations_expired += done
        return leases, done
