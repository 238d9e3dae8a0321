"""Events → delivery rows: the outbox read with a cursor of its own, and agents' presence.

The outbox (`events`, written by the triggers in the writer's transaction) is read the way
the bridge reads it (app/bridge.py: ids become visible in id order, so "id > last id" never
skips a late commit), and each event becomes one `webhook_deliveries` row per enabled
endpoint whose filters match. The rows and the new cursor (`webhook_cursor`) are written in
one transaction: a crash before the commit leaves both as they were, so no event is lost
and none is fanned out twice. One node fans out at a time: on PostgreSQL the cursor row is
taken `FOR UPDATE SKIP LOCKED` (a node that finds it locked lets the other work and looks
again shortly); everywhere the cursor moves with `UPDATE … WHERE last_id = :seen`, so a
second writer that read the same cursor (two processes on one SQLite file) rolls back.

Why the events are read before the endpoints: an endpoint gets the events after the outbox
id it was registered at (`start_after`). An endpoint committed after this batch's events were
read has a `start_after` at or past all of them; reading the endpoints first could miss one
that appears just before newer events are read, and those would pass the cursor unowed.

`agent.connected` / `agent.disconnected` are not in the outbox: the realtime core announces
them once cluster-wide (app/realtime/cluster.py decides the first and last connection) on the
node that saw them. That node's storage hook queues them here without I/O, and the next round
writes their delivery rows. What is guaranteed for them is less (docs/webhooks.md): an event
still queued when its process is SIGKILLed (milliseconds, normally) is lost.

Wake-ups: this process's commits (app/db/engine.on_commit), every bridged publication on
`global` that reaches this node (a hub tap: any writer, any node), and WEBHOOK_POLL_INTERVAL.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.bridge import channels_for
from app.core.tasks import cancel_and_wait, uninterrupted, wait_event
from app.db.models import Event, WebhookCursor, WebhookDelivery, WebhookEndpoint
from app.db.types import utcnow
from app.realtime.channels import agent_channel
from app.realtime.publication import Publication
from app.schemas import iso_ms
from app.webhooks.filters import PRESENCE_EVENTS, channels_match, event_matches

logger = logging.getLogger("context_manager.webhooks")

CURSOR = "outbox"
# The transaction-scoped advisory lock every outbox writer takes on PostgreSQL before its id
# (EVENTS_LOCK of alembic/versions/0001): held, no event can be written meanwhile.
OUTBOX_LOCK = 0x636D6576
BATCH = 500  # outbox rows per transaction
MAX_QUEUED_PRESENCE = 10_000  # presence events waiting for their rows, per process
BUSY_RETRY = 0.05  # seconds before looking again when another node holds the cursor
FIRST_DELAY = 0.1
MAX_DELAY = 5.0


def outbox_event_id(outbox_id: int) -> str:
    """`evt_<outbox id>`: the `event_id` WebSocket clients see on the same event."""
    return f"evt_{outbox_id}"


def body(event: str, timestamp: datetime, data: Any) -> str:
    """The POST body: `{"type", "timestamp", "data"}` (Standard Webhooks' payload)."""
    return orjson.dumps({"type": event, "timestamp": iso_ms(timestamp), "data": data}).decode()


class _CursorMoved(Exception):
    """Another dispatcher moved the cursor since it was read: this batch is rolled back."""


class Dispatcher:
    """Fans events out into delivery rows; `fanned` is called when it wrote some."""

    def __init__(
        self,
        engine: AsyncEngine,
        poll_interval: float,
        fanned: Callable[[], None],
        batch: int = BATCH,
    ) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        self.poll_interval = poll_interval
        self.fanned = fanned
        self.batch = batch
        self.last_id = 0  # the cursor as this node last saw or wrote it
        self.events_read = 0
        self.deliveries_created = 0
        self.presence_dropped = 0
        self._presence: collections.deque[tuple[str, str, datetime, dict[str, Any]]] = (
            collections.deque()
        )
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Whether the last batch found an enabled endpoint (None: not known), and when. With
        # none, a commit is not worth a write transaction: the cursor catches up once per
        # poll interval, and an endpoint registered meanwhile starts after the outbox head
        # anyway (`start_after`), so nothing it is owed is skipped.
        self._any_enabled: bool | None = None
        self._enabled_seen_at = 0.0
        self._endpoint_changes = 0  # so a batch that read the endpoints before one changed
        # does not record their absence over the change

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def stop(self) -> None:
        """Stop the loop, then write the presence events still queued (the drain's)."""
        await cancel_and_wait(self._task)
        self._task = None
        try:
            await self.flush_presence()
        except Exception:  # noqa: BLE001 - shutting down: log, do not mask the real exit
            logger.exception("could not record the last presence events for webhooks")

    def wake(self) -> None:
        """Something was committed (or published on `global`): look at the outbox now."""
        # While no endpoint is enabled a round would do nothing (`fan_out`), and waking the
        # loop for it after every commit cost ≈ 3 % of a PATCH's CPU (py-spy).
        if not self._quiet():
            self._wake.set()

    def _quiet(self) -> bool:
        """Whether the last batch found no enabled endpoint, less than a poll interval ago."""
        return (
            self._any_enabled is False
            and time.monotonic() - self._enabled_seen_at < self.poll_interval
        )

    def endpoints_changed(self) -> None:
        """An endpoint was registered or enabled in this process: fan out at once."""
        self._endpoint_changes += 1
        self._any_enabled = None
        self._wake.set()

    def on_global(self, publication: Publication) -> None:
        """Hub tap on `global`: a bridged event (it carries `event_id`) means a new row."""
        data = publication.data
        if isinstance(data, dict) and "event_id" in data:
            self.wake()

    def record_presence(self, event: str, agent_id: str, data: dict[str, Any]) -> None:
        """agent.connected / agent.disconnected seen by this node: rows at the next round."""
        if event not in PRESENCE_EVENTS:
            return
        if len(self._presence) >= MAX_QUEUED_PRESENCE:
            self._presence.popleft()
            self.presence_dropped += 1
            if self.presence_dropped in (1, 10, 100) or self.presence_dropped % 1000 == 0:
                logger.warning(
                    "webhook presence queue full: %d events dropped", self.presence_dropped
                )
        self._presence.append((event, agent_id, utcnow(), dict(data)))
        self._wake.set()

    async def _run(self) -> None:
        delay = FIRST_DELAY
        while True:
            wait = self.poll_interval
            try:
                busy = await uninterrupted(self._round())
                delay = FIRST_DELAY
                if busy:
                    wait = BUSY_RETRY
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - database away: the cursor is where it was
                logger.exception("webhook fan-out failed; retrying in %.1fs", delay)
                wait = delay
                delay = min(delay * 2, MAX_DELAY)
            await wait_event(self._wake, wait)
            self._wake.clear()

    async def _round(self) -> bool:
        busy = await self.fan_out()
        await self.flush_presence()
        return busy

    # --- the outbox -----------------------------------------------------------------------

    async def fan_out(self) -> bool:
        """Fan out every outbox row after the cursor; True when another node held it."""
        if self._quiet():
            return False
        while True:
            read, busy = await self._batch()
            if busy:
                return True
            if read < self.batch:
                return False

    async def _batch(self) -> tuple[int, bool]:
        """One transaction: (events read, whether another node holds the cursor)."""
        created = 0
        try:
            async with self.engine.begin() as connection:
                last = await self._lock_cursor(connection)
                if last is None:
                    return 0, True
                result = await connection.execute(
                    select(Event.id, Event.event, Event.session_id, Event.agent_id)
                    .add_columns(Event.data, Event.created_at)
                    .where(Event.id > last)
                    .order_by(Event.id)
                    .limit(self.batch)
                )
                rows = result.all()
                if not rows:
                    self.last_id = last
                    return 0, False
                changes = self._endpoint_changes
                endpoints = (await connection.execute(_ENABLED)).all()
                if changes == self._endpoint_changes:
                    self._any_enabled, self._enabled_seen_at = bool(endpoints), time.monotonic()
                values = []
                for row in rows:
                    targets = [
                        e.id
                        for e in endpoints
                        if row.id > e.start_after
                        and event_matches(e.events, row.event)
                        and channels_match(e.channels, channels_for(row.session_id, row.agent_id))
                    ]
                    if not targets:
                        continue
                    payload = body(row.event, row.created_at, row.data)
                    for endpoint_id in targets:
                        values.append(
                            _delivery(endpoint_id, outbox_event_id(row.id), row.event, payload)
                        )
                if values:
                    await connection.execute(insert(WebhookDelivery), values)
                    created = len(values)
                moved = await connection.execute(
                    update(WebhookCursor)
                    .where(WebhookCursor.name == CURSOR, WebhookCursor.last_id == last)
                    .values(last_id=rows[-1].id, updated_at=utcnow())
                )
                if moved.rowcount != 1:
                    raise _CursorMoved
        except _CursorMoved:
            return 0, True
        self.last_id = rows[-1].id
        self.events_read += len(rows)
        if created:
            self.deliveries_created += created
            self.fanned()
        return len(rows), False

    async def _lock_cursor(self, connection: AsyncConnection) -> int | None:
        """The cursor, held for this transaction (None: another node holds it)."""
        query = select(WebhookCursor.last_id).where(WebhookCursor.name == CURSOR)
        if self.postgres:
            query = query.with_for_update(skip_locked=True)
        last = await connection.scalar(query)
        if last is not None:
            return int(last)
        exists = await connection.scalar(
            select(func.count()).select_from(WebhookCursor).where(WebhookCursor.name == CURSOR)
        )
        if exists:
            return None  # locked by another node's fan-out
        # The row is created by the migration; should it be gone, no registered endpoint
        # has missed anything before the lowest outbox id one started after.
        start = await connection.scalar(select(func.min(WebhookEndpoint.start_after)))
        if start is None:
            start = await connection.scalar(select(func.coalesce(func.max(Event.id), 0)))
        statement = (postgresql_insert if self.postgres else sqlite_insert)(WebhookCursor)
        await connection.execute(
            statement.values(
                name=CURSOR, last_id=int(start or 0), updated_at=utcnow()
            ).on_conflict_do_nothing(index_elements=["name"])
        )
        return None  # look again (this row, or the one another node wrote) next round

    # --- presence -------------------------------------------------------------------------

    async def flush_presence(self) -> int:
        """Write the delivery rows of the queued presence events; how many rows."""
        if not self._presence:
            return 0
        queued, self._presence = self._presence, collections.deque()
        created = 0
        try:
            async with self.engine.begin() as connection:
                endpoints = (await connection.execute(_ENABLED)).all()
                values = []
                for event, agent_id, at, data in queued:
                    channels = ["global", agent_channel(agent_id)]
                    payload = body(event, at, data)
                    event_id = f"evt_{uuid.uuid4().hex}"
                    for e in endpoints:
                        if event_matches(e.events, event) and channels_match(e.channels, channels):
                            values.append(_delivery(e.id, event_id, event, payload))
                if values:
                    await connection.execute(insert(WebhookDelivery), values)
                    created = len(values)
        except BaseException:
            # Not written: back in front of what arrived meanwhile, within the bound.
            self._presence.extendleft(reversed(queued))
            while len(self._presence) > MAX_QUEUED_PRESENCE:
                self._presence.popleft()
                self.presence_dropped += 1
            raise
        if created:
            self.deliveries_created += created
            self.fanned()
        return created


_ENABLED = select(
    WebhookEndpoint.id,
    WebhookEndpoint.events,
    WebhookEndpoint.channels,
    WebhookEndpoint.start_after,
).where(WebhookEndpoint.enabled.is_(True))


def _delivery(endpoint_id: str, event_id: str, event: str, payload: str) -> dict[str, Any]:
    now = utcnow()
    return {
        "endpoint_id": endpoint_id,
        "event_id": event_id,
        "event_type": event,
        "payload": payload,
        "state": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }
