"""The bridge: every row the triggers append to `events` becomes publications, once.

Path of a change (any writer: this API, another process, psql)::

    UPDATE tasks …  ──trigger──▶  INSERT INTO events (same transaction)
                                   └─ PostgreSQL: NOTIFY cm_events
    bridge  ◀── woken by the NOTIFY (PostgreSQL), by this process's own commits (SQLite and
                PostgreSQL), and at least every BRIDGE_POLL_INTERVAL seconds (other writers on
                SQLite; a NOTIFY lost while reconnecting)
    bridge  ──▶ SELECT … FROM events WHERE id > last_id ORDER BY id LIMIT BRIDGE_BATCH
            ──▶ manager.publish on `global`, `sessions/{session_id}`, `agents/{agent_id}`

No event lost, none twice. The bridge remembers the last id it delivered and reads strictly
after it. Ids become visible in id order: SQLite has one writer at a time, and on PostgreSQL
the trigger takes a transaction-scoped advisory lock before taking an id, so a transaction
that took id 10 commits before the one that takes id 11 can even insert (without that, a
reader could see 11, move past 10, and lose it when it commits). An event half-published when
the broker fails is resumed at the channel where it stopped. The LISTEN connection is a
dedicated asyncpg connection (not from the pool: a pooled connection would drop its LISTEN
when returned); when PostgreSQL restarts or terminates it, the bridge reconnects with capped
exponential backoff and reads from its last id, which delivers what was written meanwhile.

Several processes on one database. With the in-memory broker (today's default) each process
has its own clients and its own bridge: every bridge delivers every event to its own clients,
so each client gets each event once. Each bridge starts at the outbox's head (a client cannot
have missed what happened before its node started). With a shared broker (BROKER=redis or
postgres), one publication already reaches every node, so only one bridge in the cluster may
publish: the bridges elect a leader with a session-level PostgreSQL advisory lock held on
their LISTEN connection; the others follow the outbox's head without publishing and take over
when the leader's connection drops. (Across such a takeover, events the old leader had read
but not published may be lost or repeated; exactly-once across a failover needs a cursor
shared by the cluster, which the multi-node work owns.) SQLite is single-node: its bridge
always publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.db.models import Event
from app.realtime.channels import agent_channel, is_valid_id, session_channel
from app.realtime.manager import ConnectionManager

logger = logging.getLogger("context_manager.bridge")

NOTIFY_CHANNEL = "cm_events"
LEADER_LOCK = 0x636D6272  # "cmbr": the bridge that may publish, with a shared broker
KEEPALIVE = 5.0  # seconds between liveness checks of the LISTEN connection
FIRST_DELAY = 0.1


def asyncpg_dsn(database_url: str) -> str:
    """The SQLAlchemy URL as a plain libpq DSN for asyncpg.connect."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def channels_for(session_id: str | None, agent_id: str | None) -> list[str]:
    """Where an outbox row goes: global, its session, its agent (ids outside the grammar,
    which only a raw SQL writer can produce, are skipped)."""
    channels = ["global"]
    if session_id and is_valid_id(session_id):
        channels.append(session_channel(session_id))
    if agent_id and is_valid_id(agent_id):
        channels.append(agent_channel(agent_id))
    return channels


class Bridge:
    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        manager: ConnectionManager,
        exclusive: bool | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.manager = manager
        self.postgres = engine.dialect.name == "postgresql"
        shared_broker = settings.broker_kind != "memory"
        self.exclusive = (shared_broker if exclusive is None else exclusive) and self.postgres
        self.leader = not self.exclusive
        self.last_id = 0
        self.delivered = 0  # events fully published
        self.reconnects = 0  # LISTEN connections re-established after a loss
        self.listening = False
        self.application_name = f"cm-bridge {manager.node_id}"[:63]
        self._wake = asyncio.Event()
        self._listening = asyncio.Event()
        self._partial: tuple[int, set[str]] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin at the outbox's head and deliver everything after it."""
        self.last_id = await self._head()
        self._tasks.append(asyncio.create_task(self._deliver_loop(), name="bridge-deliver"))
        if self.postgres:
            self._tasks.append(asyncio.create_task(self._listen_loop(), name="bridge-listen"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def wake(self) -> None:
        """Something was committed: read the outbox now rather than at the next poll."""
        self._wake.set()

    async def wait_listening(self, timeout: float = 10.0) -> None:
        """Until the LISTEN connection is up (PostgreSQL); at once on SQLite."""
        if self.postgres:
            await asyncio.wait_for(self._listening.wait(), timeout)

    # --- delivery -------------------------------------------------------------------------

    async def _deliver_loop(self) -> None:
        delay = FIRST_DELAY
        while True:
            try:
                await self.deliver_pending()
                delay = FIRST_DELAY
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - database or broker away: retry from last id
                logger.exception("bridge could not deliver; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.bridge_reconnect_max_delay)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.bridge_poll_interval)
            self._wake.clear()

    async def deliver_pending(self) -> int:
        """Publish every outbox row after the last delivered one; how many were published."""
        if not self.leader:
            self.last_id = max(self.last_id, await self._head())
            return 0
        batch = self.settings.bridge_batch
        count = 0
        while True:
            async with self.engine.connect() as connection:
                result = await connection.execute(
                    select(Event.id, Event.event, Event.session_id, Event.agent_id, Event.data)
                    .where(Event.id > self.last_id)
                    .order_by(Event.id)
                    .limit(batch)
                )
                rows = result.all()
            for row in rows:
                await self._deliver(row.id, row.event, row.session_id, row.agent_id, row.data)
                self.last_id = row.id
                self.delivered += 1
                count += 1
            if len(rows) < batch:
                return count

    async def _deliver(
        self, event_id: int, event: str, session_id: str | None, agent_id: str | None, data: Any
    ) -> None:
        partial = self._partial
        done = partial[1] if partial is not None and partial[0] == event_id else set()
        self._partial = (event_id, done)
        if isinstance(data, dict):
            data = {**data, "event_id": event_id}
        for channel in channels_for(session_id, agent_id):
            if channel in done:
                continue
            await self.manager.publish(channel, event, data)
            done.add(channel)
        self._partial = None

    async def _head(self) -> int:
        async with self.engine.connect() as connection:
            head = await connection.scalar(select(func.max(Event.id)))
        return int(head or 0)

    # --- PostgreSQL LISTEN ----------------------------------------------------------------

    def _on_notify(self, *_args: object) -> None:
        self._wake.set()

    async def _listen_loop(self) -> None:
        import asyncpg

        delay = FIRST_DELAY
        first = True
        while True:
            connection: Any = None
            try:
                connection = await asyncpg.connect(
                    asyncpg_dsn(self.settings.database_url),
                    timeout=10,
                    server_settings={"application_name": self.application_name},
                )
                lost = asyncio.Event()
                connection.add_termination_listener(lambda _c, lost=lost: lost.set())
                await connection.add_listener(NOTIFY_CHANNEL, self._on_notify)
                if not first:
                    self.reconnects += 1
                    logger.info("bridge LISTEN connection re-established")
                first = False
                delay = FIRST_DELAY
                self.listening = True
                self._listening.set()
                self._wake.set()  # catch up on what was written while we were not listening
                while not lost.is_set():
                    if self.exclusive and not self.leader:
                        self.leader = bool(
                            await connection.fetchval(
                                "SELECT pg_try_advisory_lock($1)", LEADER_LOCK
                            )
                        )
                        if self.leader:
                            logger.info("this node's bridge now publishes for the cluster")
                            self._wake.set()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), KEEPALIVE)
                    if not lost.is_set():
                        await connection.fetchval("SELECT 1", timeout=KEEPALIVE)
                logger.warning("bridge LISTEN connection lost; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect whatever the cause
                logger.warning(
                    "bridge LISTEN connection failed (%s); retrying in %.1fs", exc, delay
                )
            finally:
                self.listening = False
                self._listening.clear()
                if self.exclusive:
                    self.leader = False
                if connection is not None:
                    with contextlib.suppress(Exception):
                        connection.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.bridge_reconnect_max_delay)
