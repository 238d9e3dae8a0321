"""The bridge: every row the triggers append to `events` becomes publications.

Path of a change (any writer: this API, another process, psql)::

    UPDATE tasks …  ──trigger──▶  INSERT INTO events (same transaction)
                                   └─ PostgreSQL: NOTIFY cm_events
    bridge  ◀── woken by the NOTIFY (PostgreSQL), by this process's own commits (SQLite and
                PostgreSQL), and at least every BRIDGE_POLL_INTERVAL seconds (other writers on
                SQLite; a NOTIFY lost while reconnecting)
    bridge  ──▶ SELECT … FROM events WHERE id > last_id ORDER BY id LIMIT BRIDGE_BATCH
            ──▶ manager.publish on `global`, `sessions/{session_id}`, `agents/{agent_id}`
            ──▶ UPDATE bridge_cursor SET last_id = :id WHERE name = :n AND last_id < :id

While it runs: no event lost, none twice. The bridge remembers the last id it delivered and
reads strictly after it. Ids become visible in id order: SQLite has one writer at a time, and
on PostgreSQL the trigger takes a transaction-scoped advisory lock before taking an id, so a
transaction that took id 10 commits before the one that takes id 11 can even insert (without
that, a reader could see 11, move past 10, and lose it when it commits). The triggers are
deferred to COMMIT (migration 0008), so the lock covers the commit, not the transaction's
statements: concurrent writers run side by side and queue only to commit. An event
half-published when the broker fails is resumed at the channel where it stopped. The LISTEN
connection is a dedicated asyncpg connection (not from the pool: a pooled connection would
drop its LISTEN when returned); when PostgreSQL restarts or terminates it, the bridge
reconnects (resume.Reconnector, the brokers' loop too: capped, jittered backoff) and reads from
its in-memory last id, which delivers what was written meanwhile, once.

Across a crash, a restart or a leader takeover: at least once, and exactly once when the
broker kept the channel's history. The bridge records its last id in `bridge_cursor` (only
ever forwards) after each full batch, before it publishes a batch that would leave more than
a batch unrecorded, and otherwise at most every CURSOR_EVERY (a trickle of one event per batch
would cost a write transaction per event). On start — and when a node becomes its cluster's
leader — it resumes from that row, not from the outbox's head, so events committed just
before a `kill -9` are still delivered. (On the very first start, with no row yet, it begins
at the head and writes the row.) Events between the recorded cursor and the head seen at
that moment may already have been published by the process that died (it published, then
died before recording): before publishing one of those on a channel, the bridge reads that
channel's retained history once (`broker.history`) and skips the channel when a publication
of the same event with the same `event_id` is there. With Redis or the PostgreSQL broker the
history outlives the process, so nothing is published twice (unless it was trimmed: history
size 0, or older than the channel's TTL); the in-memory broker starts a new epoch with an
empty history after a restart, so everything after the cursor is published again — correct,
as no client saw the old epoch continue. Every bridged publication carries `event_id` (the
outbox id), so a client can drop a repeat in any case.

Several processes on one database. With the in-memory broker (today's default) each process
has its own clients and its own bridge: every bridge delivers every event to its own clients,
so each client gets each event once; each records its cursor as ``node:<NODE_ID>`` (give each
node its NODE_ID), or ``local`` when unnamed. With a shared broker (BROKER=redis or
postgres), one publication already reaches every node, so only one bridge in the cluster may
publish: the bridges elect a leader with a session-level PostgreSQL advisory lock held on
their LISTEN connection, and share the cursor ``cluster:<BROKER_PREFIX>``. No leader dies
silently: PostgreSQL releases the lock with its connection, and another bridge takes it
within KEEPALIVE, then resumes from the shared cursor as above. Before every batch the
leader checks in `pg_locks` that its LISTEN connection still holds the lock, and before every
event that its LISTEN connection is still up, so a leader cut off from PostgreSQL stops within
one batch even before it notices. (What remains: events of that last batch published after
the new leader has read a channel's history would be repeated; the new leader needs the lock,
which PostgreSQL frees only once the old connection is gone, so the window is the few
milliseconds a batch takes to publish.) SQLite is single-node: its bridge always publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.config import Settings
from app.core.tasks import cancel_and_wait, uninterrupted, wait_event
from app.db.engine import asyncpg_dsn
from app.db.models import BridgeCursor, Event
from app.db.types import utcnow
from app.realtime.broker.resume import Reconnector
from app.realtime.channels import agent_channel, is_valid_id, session_channel
from app.realtime.manager import ConnectionManager

logger = logging.getLogger("context_manager.bridge")

NOTIFY_CHANNEL = "cm_events"
LEADER_LOCK = 0x636D6272  # "cmbr": the bridge that may publish, with a shared broker
KEEPALIVE = 5.0  # seconds between liveness checks of the LISTEN connection
FIRST_DELAY = 0.1
# How stale bridge_cursor may get while events trickle in (short batches); full batches and
# a gap of a batch are recorded at once, so the crash window stays one batch.
CURSOR_EVERY = 0.5

# Does this backend (pid) hold the leader lock? A bigint key below 2**32 shows in pg_locks as
# classid 0, objid = key, objsubid 1.
HOLDS_LEADER_LOCK = text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND classid = 0 AND objid = :key AND objsubid = 1 AND pid = :pid"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
)

# The outbox rows after a cursor: built once, its values bound at each round.
_PENDING = (
    select(Event.id, Event.event, Event.session_id, Event.agent_id, Event.data)
    .where(Event.id > bindparam("after"))
    .order_by(Event.id)
    .limit(bindparam("batch"))
)


def channels_for(session_id: str | None, agent_id: str | None) -> list[str]:
    """Where an outbox row goes: global, its session, its agent (ids outside the grammar,
    which only a raw SQL writer can produce, are skipped)."""
    channels = ["global"]
    if session_id and is_valid_id(session_id):
        channels.append(session_channel(session_id))
    if agent_id and is_valid_id(agent_id):
        channels.append(agent_channel(agent_id))
    return channels


def cursor_name(settings: Settings, exclusive: bool) -> str:
    """The `bridge_cursor` row of this bridge: shared by a cluster's leaders, else per node."""
    if exclusive:
        return f"cluster:{settings.broker_prefix}"
    return f"node:{settings.node_id}" if settings.node_id else "local"


@dataclass(slots=True)
class CatchUp:
    """Events up to `until` may already be out: what each channel's history holds."""

    until: int
    seen: dict[str, set[tuple[str, int]]] = field(default_factory=dict)
    published: int = 0  # events published on at least one channel
    skipped: int = 0  # channel publications found in history and not repeated


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
        self.cursor_name = cursor_name(settings, self.exclusive)
        self.last_id = 0
        self.persisted_id = 0  # what bridge_cursor holds, as far as this bridge knows
        self._persisted_at = 0.0  # monotonic time of the last write of bridge_cursor
        self.resumed_from: int | None = None  # the cursor of the last start or takeover
        self.delivered = 0  # events fully published
        # Events between a resumed cursor and the head seen then: published (no channel's
        # history had them), and channel publications found in history and not repeated.
        self.catchup_published = 0
        self.catchup_skipped = 0
        self.listening = False
        self.application_name = f"cm-bridge {manager.node_id}"[:63]
        self._wake = asyncio.Event()
        self._listening = asyncio.Event()
        self._partial: tuple[int, set[str]] | None = None
        self._catchup: CatchUp | None = None
        # Delivery and resuming never interleave (a takeover resets last_id mid-loop otherwise).
        self._lock = asyncio.Lock()
        self._listen_pid: int | None = None
        self._lost = asyncio.Event()
        self._reconnector = Reconnector(
            self, base=FIRST_DELAY, cap=settings.bridge_reconnect_max_delay
        )
        self._deliver_task: asyncio.Task[None] | None = None
        self._listen_task: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume from the persisted cursor (a leader-elected bridge: once it leads)."""
        if self.leader:
            async with self._lock:
                await self._resume()
        self._deliver_task = asyncio.create_task(self._deliver_loop(), name="bridge-deliver")
        if self.postgres:
            self._listen_task = asyncio.create_task(self._reconnector.run(), name="bridge-listen")

    async def stop(self) -> None:
        """Stop delivering, record how far it got, then let go of the LISTEN connection."""
        await cancel_and_wait(self._deliver_task)
        self._deliver_task = None
        if self.leader:
            try:
                await self._persist()
            except Exception:  # noqa: BLE001 - the next start re-checks from the older cursor
                logger.warning("bridge could not record its cursor on stop", exc_info=True)
        await cancel_and_wait(self._listen_task)
        self._listen_task = None

    def wake(self) -> None:
        """Something was committed: read the outbox now rather than at the next poll."""
        self._wake.set()

    async def wait_listening(self, timeout: float = 10.0) -> None:
        """Until the LISTEN connection is up (PostgreSQL); at once on SQLite."""
        if self.postgres:
            async with asyncio.timeout(timeout):
                await self._listening.wait()

    # --- the persisted cursor -------------------------------------------------------------

    async def stored_cursor(self) -> int | None:
        """The last id recorded in `bridge_cursor` for this bridge (None: no row yet)."""
        async with self.engine.connect() as connection:
            stored = await connection.scalar(
                select(BridgeCursor.last_id).where(BridgeCursor.name == self.cursor_name)
            )
        return None if stored is None else int(stored)

    async def _resume(self) -> None:
        """Continue from the recorded cursor; events up to today's head get the history check."""
        async with self.engine.begin() as connection:
            stored = await self._cursor_row(connection)
            head = int(await connection.scalar(select(func.max(Event.id))) or 0)
            if stored is None:  # the very first start: nothing before the head is owed
                await connection.execute(self._insert_cursor(head))
                stored = await self._cursor_row(connection)  # another node may have won
                assert stored is not None
        self.last_id = self.persisted_id = self.resumed_from = stored
        self._partial = None
        self._catchup = CatchUp(head) if head > stored else None
        if self._catchup is not None:
            logger.info(
                "bridge %s resumes at outbox id %d; %d events up to %d are checked against "
                "the broker's history before publishing",
                self.cursor_name,
                stored,
                head - stored,
                head,
            )

    async def _cursor_row(self, connection: AsyncConnection) -> int | None:
        stored = await connection.scalar(
            select(BridgeCursor.last_id).where(BridgeCursor.name == self.cursor_name)
        )
        return None if stored is None else int(stored)

    def _insert_cursor(self, last_id: int) -> Any:
        """INSERT … ON CONFLICT DO NOTHING in this database's dialect."""
        insert = postgresql_insert if self.postgres else sqlite_insert
        statement = insert(BridgeCursor).values(
            name=self.cursor_name, last_id=last_id, updated_at=utcnow()
        )
        return statement.on_conflict_do_nothing(index_elements=["name"])

    async def _persist(self) -> None:
        """Record last_id; only ever forwards, whoever else writes the row."""
        last_id = self.last_id
        if last_id <= self.persisted_id:
            return
        async with self.engine.begin() as connection:
            await connection.execute(
                update(BridgeCursor)
                .where(BridgeCursor.name == self.cursor_name, BridgeCursor.last_id < last_id)
                .values(last_id=last_id, updated_at=utcnow())
            )
        self.persisted_id = last_id
        self._persisted_at = time.monotonic()

    # --- delivery -------------------------------------------------------------------------

    async def _deliver_loop(self) -> None:
        delay = FIRST_DELAY
        while True:
            try:
                await uninterrupted(self.deliver_pending())
                delay = FIRST_DELAY
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - database or broker away: retry from last id
                logger.exception("bridge could not deliver; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.bridge_reconnect_max_delay)
                continue
            await wait_event(self._wake, self.settings.bridge_poll_interval)
            self._wake.clear()

    async def deliver_pending(self) -> int:
        """Publish every outbox row after the last delivered one; how many were published."""
        async with self._lock:
            if not self.leader:
                # A follower shows the cluster's cursor (cm_bridge_last_id); it resumes from
                # the row itself when it takes over.
                self.last_id = max(self.last_id, await self.stored_cursor() or 0)
                return 0
            batch = self.settings.bridge_batch
            count = 0
            while True:
                async with self.engine.connect() as connection:
                    if self.exclusive and not await self._holds_leader_lock(connection):
                        logger.warning("bridge lost the leader lock; it stops publishing")
                        self.leader = False
                        return count
                    result = await connection.execute(
                        _PENDING, {"after": self.last_id, "batch": batch}
                    )
                    rows = result.all()
                if rows and rows[-1].id - self.persisted_id > batch:
                    # Across a crash at most one batch is published and not recorded (what a
                    # restart's history check covers), however many small batches came first.
                    await self._persist()
                for row in rows:
                    if not self.leader:
                        return count  # the LISTEN connection died meanwhile: not ours to record
                    await self._deliver(row.id, row.event, row.session_id, row.agent_id, row.data)
                    self.last_id = row.id
                    self.delivered += 1
                    count += 1
                # A failure above leaves the row as it was: the retry goes on from the
                # in-memory last_id, and the next complete batch records it.
                self._end_catchup()
                if len(rows) == batch:
                    await self._persist()
                    continue
                # A write per batch of one costs a writer transaction per event under a
                # trickle (one agent's writes): record at most every CURSOR_EVERY then; the
                # idle poll records the rest.
                if time.monotonic() - self._persisted_at >= CURSOR_EVERY:
                    await self._persist()
                return count

    async def _deliver(
        self, event_id: int, event: str, session_id: str | None, agent_id: str | None, data: Any
    ) -> None:
        partial = self._partial
        done = partial[1] if partial is not None and partial[0] == event_id else set()
        self._partial = (event_id, done)
        if isinstance(data, dict):
            data = {**data, "event_id": event_id}
        catchup = self._catchup
        checking = catchup is not None and event_id <= catchup.until
        published = False
        for channel in channels_for(session_id, agent_id):
            if channel in done:
                continue
            if checking and await self._in_history(channel, event, event_id):
                self.catchup_skipped += 1
                if catchup is not None:
                    catchup.skipped += 1
            else:
                await self.manager.publish(channel, event, data)
                published = True
            done.add(channel)
        self._partial = None
        if checking and published and catchup is not None:
            self.catchup_published += 1
            catchup.published += 1

    async def _in_history(self, channel: str, event: str, event_id: int) -> bool:
        """Whether `channel`'s retained history holds this outbox event (read once per resume)."""
        catchup = self._catchup
        assert catchup is not None
        seen = catchup.seen.get(channel)
        if seen is None:
            page = await self.manager.broker.history(channel)
            seen = set()
            for publication in page.publications:
                data = publication.data
                found = data.get("event_id") if isinstance(data, dict) else None
                # With the event name: clients cannot publish system events, so a client's
                # own `event_id` field can never make the bridge skip a real one.
                if isinstance(found, int):
                    seen.add((publication.event, found))
            catchup.seen[channel] = seen
        return (event, event_id) in seen

    def _end_catchup(self) -> None:
        catchup = self._catchup
        if catchup is not None and self.last_id >= catchup.until:
            logger.info(
                "bridge %s caught up to %d: %d events published, %d channel publications "
                "found in the broker's history and skipped",
                self.cursor_name,
                catchup.until,
                catchup.published,
                catchup.skipped,
            )
            self._catchup = None

    async def _holds_leader_lock(self, connection: AsyncConnection) -> bool:
        if self._listen_pid is None:
            return False
        held = await connection.scalar(
            HOLDS_LEADER_LOCK, {"key": LEADER_LOCK, "pid": self._listen_pid}
        )
        return bool(held)

    # --- PostgreSQL LISTEN ----------------------------------------------------------------

    def _on_notify(self, *_args: object) -> None:
        self._wake.set()

    async def _take_over(self) -> None:
        """This node just got the leader lock: resume from the cluster's cursor, then lead."""
        async with self._lock:
            await self._resume()
            self.leader = True
        logger.info("this node's bridge now publishes for the cluster")
        self._wake.set()

    # --- the LISTEN connection (a Link its Reconnector keeps up) -----------------------------

    @property
    def link_name(self) -> str:
        return "bridge LISTEN connection"

    async def open_link(self) -> Any:
        import asyncpg

        connection = await asyncpg.connect(
            asyncpg_dsn(self.settings.database_url),
            timeout=10,
            server_settings={"application_name": self.application_name},
        )
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _c: lost.set())
        self._lost = lost
        return connection

    async def ready_link(self, connection: Any, after_outage: bool) -> None:
        await connection.add_listener(NOTIFY_CHANNEL, self._on_notify)
        self._listen_pid = connection.get_server_pid()
        self.listening = True
        self._listening.set()
        self._wake.set()  # catch up on what was written while we were not listening

    async def watch_link(self, connection: Any) -> None:
        """Until the connection is lost: try for the leader lock (a shared broker), and check
        the connection is alive every KEEPALIVE seconds."""
        lost = self._lost
        while not lost.is_set():
            if self.exclusive and not self.leader:
                got = await connection.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK)
                if got:
                    await self._take_over()
            await wait_event(lost, KEEPALIVE)
            if not lost.is_set():
                await connection.fetchval("SELECT 1", timeout=KEEPALIVE)
        raise ConnectionError("bridge LISTEN connection lost")

    def drop_link(self, connection: Any) -> None:
        self.listening = False
        self._listening.clear()
        self._listen_pid = None
        if self.exclusive:
            self.leader = False  # PostgreSQL frees the lock with the connection
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.terminate()

    @property
    def reconnects(self) -> int:
        """LISTEN connections re-established after a loss."""
        return self._reconnector.reconnects
