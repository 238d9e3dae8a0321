"""KPIs: one snapshot per METRICS_INTERVAL per node, published as `metric.update` on `metrics`.

The snapshot is computed once per interval whatever the number of listeners, and GET
/api/metrics returns the latest one. It must stay cheap on large tables: every query is an
index lookup, either bounded by a time window (the last minute, the last hour) or counting a
small set (active sessions, online agents, unread messages, unfinished tasks). Tasks by
status is kept by `TaskCounter`: finished tasks never change, so their counts are a base from
a full count every ten minutes plus the tasks finished since. `bench/metrics_cost.py`
measures the whole snapshot on a million rows.

The last SERIES_WINDOW seconds of snapshots stay in memory (`MetricsTask.series`, GET
/api/metrics/history) so the dashboard's activity chart opens with the minutes before it, not
empty: the `metrics` channel's history keeps only the latest update.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Float, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.tasks import cancel_and_wait, uninterrupted
from app.db.models import Action, Agent, AgentStatus, Event, Message, Session, Task, TaskStatus
from app.db.types import utcnow
from app.realtime.manager import ConnectionManager
from app.schemas import iso_ms

logger = logging.getLogger("context_manager.metrics")

METRICS_CHANNEL = "metrics"
METRICS_EVENT = "metric.update"
SERIES_WINDOW = 600.0  # seconds of snapshots kept for the chart: its ten-minute window
SERIES_MAX = 1200  # whatever the interval, a bounded list


def _seconds_between(connection: AsyncConnection, start: Any, end: Any) -> ColumnElement[Any]:
    if connection.dialect.name == "postgresql":
        return func.extract("epoch", end - start)
    return cast((func.julianday(end) - func.julianday(start)) * 86400.0, Float)


class TaskCounter:
    """Tasks by status without counting the whole table every tick.

    A finished task never changes again (the API enforces it), so the finished statuses only
    grow: their count is a base, taken by a full count every RECOUNT seconds over tasks that
    finished before a settled mark (`SETTLE` seconds before the count), plus a range seek on
    ix_tasks_finished for tasks finished after the mark. The unfinished statuses are few and
    counted exactly each time. The periodic full count corrects what the API's rules do not
    cover (a raw SQL writer finishing a task without completed_at, deletions).
    """

    RECOUNT = 600.0
    SETTLE = timedelta(seconds=60)  # longer than any transaction between stamp and commit

    def __init__(self) -> None:
        self.base: dict[str, int] | None = None
        self.mark: Any = None
        self.counted_at = 0.0
        self.full_counts = 0

    async def count(self, db: AsyncConnection, now: Any) -> dict[str, int]:
        loop_time = asyncio.get_running_loop().time()
        by_status = {status.value: 0 for status in TaskStatus}
        finished = [s.value for s in TaskStatus if s.finished]
        if self.base is None or loop_time - self.counted_at >= self.RECOUNT:
            mark = now - self.SETTLE
            base = dict.fromkeys(finished, 0)
            for status, count in (
                await db.execute(
                    select(Task.status, func.count())
                    .where(Task.status.in_(finished), Task.completed_at <= mark)
                    .group_by(Task.status)
                )
            ).all():
                base[status] = int(count)
            # Finished without completed_at (raw SQL): only the full count sees them.
            for status, count in (
                await db.execute(
                    select(Task.status, func.count())
                    .where(Task.status.in_(finished), Task.completed_at.is_(None))
                    .group_by(Task.status)
                )
            ).all():
                base[status] += int(count)
            self.base, self.mark, self.counted_at = base, mark, loop_time
            self.full_counts += 1
        for status in TaskStatus:
            if status.finished:
                recent = await db.scalar(
                    select(func.count())
                    .select_from(Task)
                    .where(Task.status == status.value, Task.completed_at > self.mark)
                )
                by_status[status.value] = self.base[status.value] + int(recent or 0)
            else:
                counted = await db.scalar(
                    select(func.count()).select_from(Task).where(Task.status == status.value)
                )
                by_status[status.value] = int(counted or 0)
        return by_status


async def compute_snapshot(
    engine: AsyncEngine,
    connected_clients: int = 0,
    live_agents: frozenset[str] = frozenset(),
    counter: TaskCounter | None = None,
) -> dict[str, Any]:
    """One KPI snapshot from the database, plus this node's live connections."""
    now = utcnow()
    minute_ago = now - timedelta(minutes=1)
    hour_ago = now - timedelta(hours=1)
    async with engine.connect() as db:
        active_sessions = await db.scalar(
            select(func.count()).select_from(Session).where(Session.status == "active")
        )
        online_ids = set(
            (await db.scalars(select(Agent.id).where(Agent.status == AgentStatus.ONLINE))).all()
        )
        actions = await db.scalar(
            select(func.count()).select_from(Action).where(Action.created_at >= minute_ago)
        )
        by_status = await (counter or TaskCounter()).count(db, now)
        duration = _seconds_between(
            db, func.coalesce(Task.started_at, Task.created_at), Task.completed_at
        )
        # One range seek per status on ix_tasks_finished (status, completed_at); with a
        # GROUP BY, SQLite's planner walks the whole status index instead (0.6 s on 400k rows).
        finished: dict[str, tuple[int, float | None]] = {}
        for status in (TaskStatus.COMPLETED, TaskStatus.FAILED):
            count, mean = (
                await db.execute(
                    select(func.count(), func.avg(duration)).where(
                        Task.status == status.value, Task.completed_at >= hour_ago
                    )
                )
            ).one()
            finished[status] = (int(count), float(mean) if mean is not None else None)
        unread = await db.scalar(
            select(func.count())
            .select_from(Message)
            .where(Message.read_at.is_(None), Message.expired_at.is_(None))
        )
        events = await db.scalar(
            select(func.count()).select_from(Event).where(Event.created_at >= minute_ago)
        )
    completed, mean_duration = finished.get(TaskStatus.COMPLETED, (0, None))
    failed = finished.get(TaskStatus.FAILED, (0, None))[0]
    return {
        "active_sessions": int(active_sessions or 0),
        "active_agents": len(online_ids | live_agents),
        "connected_clients": connected_clients,
        "actions_per_minute": float(actions or 0),
        "tasks_by_status": by_status,
        "tasks_completed_last_hour": completed,
        "tasks_failed_last_hour": failed,
        "failure_rate": round(failed / (completed + failed), 4) if completed + failed else 0.0,
        "mean_task_duration_seconds": round(mean_duration, 3)
        if mean_duration is not None
        else None,
        "unread_messages": int(unread or 0),
        "events_per_second": round((events or 0) / 60.0, 3),
        "timestamp": iso_ms(now),
    }


class MetricsTask:
    """This node's metrics loop, and the latest snapshot for GET /api/metrics."""

    def __init__(
        self,
        engine: AsyncEngine,
        manager: ConnectionManager,
        interval: float,
        publishes: Callable[[], bool] | None = None,
    ) -> None:
        self.engine = engine
        self.manager = manager
        self.interval = interval
        # With a shared broker one node speaks for the cluster (the bridge's leader); alone,
        # a node serves its own listeners.
        self._publishes = publishes
        self.computed = 0  # snapshots computed by this node
        self.published = 0  # metric.update events this node published
        self.last_duration = 0.0  # seconds the last snapshot took
        self._latest: dict[str, Any] | None = None
        self._series: deque[dict[str, Any]] = deque(
            maxlen=max(1, min(SERIES_MAX, math.ceil(SERIES_WINDOW / interval)))
        )
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.counter = TaskCounter()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="metrics")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def refresh(self) -> dict[str, Any]:
        """Compute a snapshot now and keep it as the latest."""
        async with self._lock:
            loop = asyncio.get_running_loop()
            started = loop.time()
            snapshot = await compute_snapshot(
                self.engine,
                connected_clients=len(self.manager.connections),
                live_agents=frozenset(self.manager.presence.online()),
                counter=self.counter,
            )
            self.last_duration = loop.time() - started
            self.computed += 1
            self._latest = snapshot
            self._series.append(snapshot)
            return snapshot

    def series(self) -> list[dict[str, Any]]:
        """The snapshots of the last SERIES_WINDOW seconds (at most SERIES_MAX), oldest first."""
        return list(self._series)

    async def latest(self) -> dict[str, Any]:
        """The latest snapshot (computed now when there is none yet)."""
        return self._latest if self._latest is not None else await self.refresh()

    def _should_publish(self) -> bool:
        if self._publishes is not None:
            return self._publishes()
        # Nobody here, nothing to publish (the snapshot is still kept for GET /api/metrics).
        return bool(self.manager.hub.subscribers(METRICS_CHANNEL))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                snapshot = await uninterrupted(self.refresh())
                if self._should_publish():
                    await self.manager.publish(METRICS_CHANNEL, METRICS_EVENT, snapshot)
                    self.published += 1
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - skip this tick, try the next one
                logger.exception("metrics snapshot failed")
            # A fixed cadence: a slow snapshot shortens the pause instead of drifting.
            next_at = max(next_at + self.interval, loop.time())
            await asyncio.sleep(next_at - loop.time())
