"""Durability of the outbox → WebSocket path: the bridge's persisted cursor across restarts,
leader takeovers and `kill -9`; no duplicates where the broker kept history; outbox retention.

The `kill -9` tests run `python -m app.cli serve` as a subprocess (tests/test_cluster.py's
`Nodes`), write tasks over REST from several clients, SIGKILL the process mid-stream and
restart it on the same database. Figures are printed; run with `-s` to see them.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.bridge import Bridge
from app.db.types import utcnow
from app.server import Service
from app.sweeper import PRUNE_LOCK, MessageSweeper
from tests.conftest import ClientFactory, ServiceFactory
from tests.databases import BACKENDS, api, data_settings, fresh_database, postgres_database
from tests.test_bridge import collect, execute_raw
from tests.test_cluster import Nodes, _drop_prefix

# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request, tmp_path) as url:
        yield url


async def query(database_url: str, statement: str) -> list[tuple[Any, ...]]:
    """Rows of a query over a connection of its own."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":

        def run() -> list[tuple[Any, ...]]:
            with sqlite3.connect(url.database or "", timeout=10) as connection:
                return list(connection.execute(statement).fetchall())

        return await asyncio.to_thread(run)
    connection = await asyncpg.connect(
        url.set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        return [tuple(row) for row in await connection.fetch(statement)]
    finally:
        await connection.close()


async def outbox_head(database_url: str) -> int:
    return int((await query(database_url, "SELECT coalesce(max(id), 0) FROM events"))[0][0])


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 15.0) -> Any:
    """Poll an async predicate until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {check}"
        await asyncio.sleep(0.05)


async def caught_up(service: Service, database_url: str) -> None:
    """Until the service's bridge has published and recorded the whole outbox."""
    bridge: Bridge = service.app.state.bridge
    head = await outbox_head(database_url)

    async def done() -> bool:
        return bridge.leader and bridge.last_id >= head and bridge.persisted_id >= head

    await eventually(done)


async def history_events(service: Service, channel: str) -> list[tuple[str, int, str]]:
    """(event, event_id, entity id) of every bridged publication retained on `channel`."""
    page = await service.app.state.manager.broker.history(channel)
    found = []
    for publication in page.publications:
        data = publication.data
        if isinstance(data, dict) and "event_id" in data:
            entity = data.get("task_id") or data.get("message_id") or ""
            found.append((publication.event, data["event_id"], entity))
    return found


async def post_tasks(service: Service, count: int, **fields: Any) -> list[str]:
    async with api(service) as http:
        ids = []
        for i in range(count):
            response = await http.post("/api/tasks", json={"title": f"t{i}", **fields})
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
    return ids


async def raw_tasks(database_url: str, prefix: str, count: int) -> list[str]:
    ids = [f"{prefix}{i}" for i in range(count)]
    values = ", ".join(f"('{i}', 'raw', 's1', 'a1')" for i in ids)
    await execute_raw(
        database_url, f"INSERT INTO tasks (id, title, session_id, agent_id) VALUES {values}"
    )
    return ids


# --- the persisted cursor ----------------------------------------------------------------------


async def test_restart_resumes_from_the_recorded_cursor(
    database_url: str, start_service: ServiceFactory
) -> None:
    """Events written while the service is down are delivered after it starts; with the
    in-memory broker an event published but not recorded is published again (new epoch)."""
    first = await start_service(**data_settings(database_url))
    bridge: Bridge = first.app.state.bridge
    assert bridge.cursor_name == "local"
    before = await post_tasks(first, 3)
    await caught_up(first, database_url)
    head = await outbox_head(database_url)
    assert await bridge.stored_cursor() == head
    stored = await query(database_url, "SELECT name, last_id FROM bridge_cursor")
    assert stored == [("local", head)]
    await first.stop()

    # As if the process died after publishing the last event but before recording it.
    await execute_raw(database_url, f"UPDATE bridge_cursor SET last_id = {head - 1}")
    down = await raw_tasks(database_url, "down", 4)

    second = await start_service(**data_settings(database_url, migrate_on_start=False))
    resumed: Bridge = second.app.state.bridge
    assert resumed.resumed_from == head - 1
    await caught_up(second, database_url)
    got = await history_events(second, "global")
    assert [entity for _, _, entity in got] == [before[-1], *down]
    assert [event_id for _, event_id, _ in got] == list(range(head, head + 5))
    # The in-memory history of a new process holds nothing: all five go out.
    assert (resumed.catchup_published, resumed.catchup_skipped) == (5, 0)
    assert await resumed.stored_cursor() == head + 4


async def test_a_trickle_records_the_cursor_late_but_never_a_batch_behind(
    database_url: str, start_service: ServiceFactory
) -> None:
    """One event per batch (one agent's writes) does not cost a cursor write per event, and
    what is published but not recorded stays within one batch; the idle poll records the rest."""
    service = await start_service(**data_settings(database_url, bridge_batch=4))
    bridge: Bridge = service.app.state.bridge
    recorded: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE BRIDGE_CURSOR"):
            recorded.append(statement)

    engine = service.app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    gaps = []
    async with api(service) as http:
        for i in range(12):
            response = await http.post("/api/tasks", json={"title": f"trickle {i}"})
            assert response.status_code == 201, response.text
            head = await outbox_head(database_url)

            async def delivered(head: int = head) -> bool:
                return bridge.last_id >= head

            await eventually(delivered)
            gaps.append(bridge.last_id - (await bridge.stored_cursor() or 0))
    assert max(gaps) <= 4, gaps
    assert len(recorded) < 12, f"{len(recorded)} cursor writes for 12 events"
    head = await outbox_head(database_url)

    async def recorded_all() -> bool:
        return await bridge.stored_cursor() == head

    await eventually(recorded_all)
    event.remove(engine, "before_cursor_execute", count)


async def test_first_start_begins_at_the_head_and_records_it(
    database_url: str, start_service: ServiceFactory
) -> None:
    first = await start_service(**data_settings(database_url))
    await post_tasks(first, 2)
    await caught_up(first, database_url)
    await first.stop()
    await execute_raw(database_url, "DELETE FROM bridge_cursor")
    await raw_tasks(database_url, "old", 2)
    head = await outbox_head(database_url)

    second = await start_service(**data_settings(database_url, migrate_on_start=False))
    bridge: Bridge = second.app.state.bridge
    assert bridge.resumed_from == head and await bridge.stored_cursor() == head
    fresh = await post_tasks(second, 1)
    await caught_up(second, database_url)
    assert [entity for _, _, entity in await history_events(second, "global")] == fresh


async def test_node_id_names_the_cursor(database_url: str, start_service: ServiceFactory) -> None:
    service = await start_service(**data_settings(database_url, node_id="ws-7"))
    await post_tasks(service, 1)
    await caught_up(service, database_url)
    assert await query(database_url, "SELECT name FROM bridge_cursor") == [("node:ws-7",)]


# --- shared broker: exactly once across restarts and takeovers ---------------------------------


@pytest.fixture
async def shared(postgres_url: str, redis_url: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A fresh PostgreSQL database and a Redis namespace of this test's own."""
    prefix = f"t{secrets.token_hex(5)}"
    async with postgres_database(postgres_url) as url:
        try:
            yield url, {"broker": "redis", "redis_url": redis_url, "broker_prefix": prefix}
        finally:
            await _drop_prefix(redis_url, prefix)


async def leader_of(*services: Service) -> Bridge:
    bridges: list[Bridge] = [s.app.state.bridge for s in services]

    async def one() -> Bridge | None:
        leaders = [b for b in bridges if b.leader]
        return leaders[0] if len(leaders) == 1 else None

    leader: Bridge = await eventually(one, 20)
    return leader


@pytest.mark.postgres
@pytest.mark.redis
async def test_restart_with_redis_history_publishes_nothing_twice(
    start_service: ServiceFactory, shared: tuple[str, dict[str, Any]]
) -> None:
    url, broker = shared
    first = await start_service(**data_settings(url, **broker))
    await leader_of(first)
    assert first.app.state.bridge.cursor_name == f"cluster:{broker['broker_prefix']}"
    published = await post_tasks(first, 5, session_id="s1", agent_id="a1")
    await caught_up(first, url)
    head = await outbox_head(url)
    await first.stop()

    # As if the leader died after publishing all five events but before recording any.
    await execute_raw(url, f"UPDATE bridge_cursor SET last_id = {head - 5}")
    down = await raw_tasks(url, "down", 2)

    second = await start_service(**data_settings(url, migrate_on_start=False, **broker))
    bridge = await leader_of(second)
    await caught_up(second, url)
    assert bridge.resumed_from == head - 5
    assert bridge.catchup_skipped == 5 * 3  # global, sessions/s1, agents/a1
    assert bridge.catchup_published == 2  # the rows written while it was down
    for channel in ("global", "sessions/s1", "agents/a1"):
        got = await history_events(second, channel)
        assert [entity for _, _, entity in got] == [*published, *down], channel
        event_ids = [event_id for _, event_id, _ in got]
        assert event_ids == sorted(set(event_ids))  # each once, in outbox order


@pytest.mark.postgres
@pytest.mark.redis
async def test_leader_takeovers_lose_nothing_and_repeat_nothing(
    start_service: ServiceFactory, ws_client: ClientFactory, shared: tuple[str, dict[str, Any]]
) -> None:
    """Rows are written while the leader's connection is terminated again and again: every
    event reaches a subscriber on each node once, and the history holds each once."""
    url, broker = shared
    first = await start_service(**data_settings(url, **broker))
    second = await start_service(**data_settings(url, migrate_on_start=False, **broker))
    services = (first, second)
    await leader_of(*services)
    watchers = []
    for service in services:
        watcher = await ws_client(service)
        await watcher.subscribe("global")
        watchers.append(watcher)

    total = 120
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    writer = await asyncpg.connect(plain)
    admin = await asyncpg.connect(plain)

    async def write() -> None:
        for i in range(total):
            await writer.execute("INSERT INTO tasks (id, title) VALUES ($1, 'raw')", f"r{i:03d}")
            await asyncio.sleep(0.01)

    takeovers = 0
    try:
        writing = asyncio.create_task(write())
        for _ in range(3):
            await asyncio.sleep(0.3)
            leader = await leader_of(*services)
            takeovers += await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1",
                leader.application_name,
            )
        await writing
    finally:
        await writer.close()
        await admin.close()
    assert takeovers == 3
    await leader_of(*services)
    expected = [f"r{i:03d}" for i in range(total)]
    for watcher in watchers:
        frames = await collect(watcher, total, timeout=40)
        assert [f["data"]["task_id"] for f in frames] == expected
        await watcher.no_frame(0.5)
    got = await history_events(first, "global")
    assert [entity for _, _, entity in got] == expected
    bridges: list[Bridge] = [s.app.state.bridge for s in services]
    print(
        f"\ntakeovers: 3; resumed from {[b.resumed_from for b in bridges]}, "
        f"channel publications found in history and skipped "
        f"{sum(b.catchup_skipped for b in bridges)}"
    )


@pytest.mark.postgres
async def test_a_leader_without_its_lock_stops_publishing(
    start_service: ServiceFactory, postgres_url: str
) -> None:
    """The pg_locks check: a leader whose LISTEN backend no longer holds the lock does not
    publish the next batch, even before its own connection notices."""
    async with postgres_database(postgres_url) as url:
        service = await start_service(**data_settings(url, broker="postgres"))
        bridge = await leader_of(service)
        await caught_up(service, url)
        listen_pid = bridge._listen_pid
        assert listen_pid is not None
        async with service.app.state.engine.connect() as connection:
            assert await bridge._holds_leader_lock(connection)
        # As if the lock had gone with a backend this bridge has not yet noticed is dead.
        bridge._listen_pid = -1
        late = await raw_tasks(url, "late", 1)
        assert await bridge.deliver_pending() == 0
        assert not bridge.leader
        assert late[0] not in {e for _, _, e in await history_events(service, "global")}
        # Its LISTEN loop takes the lock again and delivers from the cursor, once.
        bridge._listen_pid = listen_pid
        await eventually(lambda: _true(bridge.leader), 20)
        await caught_up(service, url)
        got = [e for _, _, e in await history_events(service, "global")]
        assert got.count(late[0]) == 1


async def _true(value: bool) -> bool:
    return value


# --- outbox retention --------------------------------------------------------------------------


def ago(database_url: str, days: float) -> str:
    """An SQL timestamp `days` ago, as each database stores them."""
    if make_url(database_url).get_backend_name() != "sqlite":
        return f"now() - interval '{days} days'"
    # SQLite: naive UTC text, as UTCDateTime and the triggers write it.
    return f"'{(utcnow() - timedelta(days=days)).strftime('%Y-%m-%d %H:%M:%S.%f')}'"


async def test_outbox_pruning_keeps_what_a_bridge_still_needs(
    database_url: str, start_service: ServiceFactory
) -> None:
    service = await start_service(**data_settings(database_url))
    await post_tasks(service, 6)
    await caught_up(service, database_url)
    first = int((await query(database_url, "SELECT min(id) FROM events"))[0][0])
    ids = list(range(first, first + 6))
    await execute_raw(
        database_url, f"UPDATE events SET created_at = {ago(database_url, 10)} WHERE id <= {ids[3]}"
    )
    # A second bridge that has only published the first two.
    await execute_raw(
        database_url,
        "INSERT INTO bridge_cursor (name, last_id, updated_at) "
        f"VALUES ('node:laggard', {ids[1]}, {ago(database_url, 0)})",
    )
    sweeper = MessageSweeper(
        service.app.state.engine, 60, events_retention=7 * 86400, prune_batch=1
    )

    async def remaining() -> list[int]:
        return [row[0] for row in await query(database_url, "SELECT id FROM events ORDER BY id")]

    assert await sweeper.prune_events() == 2  # old and behind every cursor; one per batch
    assert await remaining() == ids[2:]

    # A cursor untouched for longer than the retention no longer holds rows back.
    await execute_raw(
        database_url,
        f"UPDATE bridge_cursor SET updated_at = {ago(database_url, 8)} WHERE name <> 'local'",
    )
    assert await sweeper.prune_events() == 2
    assert await remaining() == ids[4:]  # the recent ones stay
    assert await sweeper.prune_events() == 0
    assert sweeper.pruned == 4

    # Everything pruned: ids are not reused, so the bridge never skips a new row.
    await execute_raw(database_url, f"UPDATE events SET created_at = {ago(database_url, 10)}")
    assert await sweeper.prune_events() == 2
    assert await remaining() == []
    new = await post_tasks(service, 1)
    await caught_up(service, database_url)
    assert await remaining() == [ids[-1] + 1]
    assert [entity for _, _, entity in await history_events(service, "global")][-1] == new[0]


async def test_outbox_pruning_waits_for_the_webhook_fan_out_while_an_endpoint_is_enabled(
    database_url: str, start_service: ServiceFactory
) -> None:
    service = await start_service(
        **data_settings(database_url, webhook_allow_private=True, webhook_poll_interval=30)
    )
    async with api(service) as http:
        created = await http.post(
            "/api/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["message.read"]}
        )
        assert created.status_code == 201, created.text
        hook = created.json()
        await post_tasks(service, 4)
        await caught_up(service, database_url)
        first = int((await query(database_url, "SELECT min(id) FROM events"))[0][0])
        await execute_raw(database_url, f"UPDATE events SET created_at = {ago(database_url, 10)}")
        # A fan-out that has read only the first event (nothing wakes it: a 30 s poll).
        await execute_raw(
            database_url,
            f"UPDATE webhook_cursor SET last_id = {first}, updated_at = {ago(database_url, 0)}",
        )
        sweeper = MessageSweeper(service.app.state.engine, 60, events_retention=7 * 86400)
        assert await sweeper.prune_events() == 1  # only what the fan-out has read

        # With no endpoint enabled the fan-out is owed nothing: its cursor holds nothing back.
        off = await http.patch(f"/api/webhooks/{hook['id']}", json={"enabled": False})
        assert off.status_code == 200
        assert await sweeper.prune_events() == 3


async def test_outbox_pruning_runs_in_the_sweeper_loop(
    database_url: str, start_service: ServiceFactory
) -> None:
    service = await start_service(**data_settings(database_url))
    await post_tasks(service, 3)
    await caught_up(service, database_url)
    await execute_raw(database_url, f"UPDATE events SET created_at = {ago(database_url, 2)}")
    sweeper = MessageSweeper(
        service.app.state.engine, 0.05, events_retention=86400, prune_interval=0.1
    )
    await sweeper.start()
    try:
        await eventually(lambda: _true(sweeper.pruned == 3))
    finally:
        await sweeper.stop()
    assert await query(database_url, "SELECT id FROM events") == []


@pytest.mark.postgres
async def test_outbox_pruning_takes_turns_on_postgres(
    start_service: ServiceFactory, postgres_url: str
) -> None:
    async with postgres_database(postgres_url) as url:
        service = await start_service(**data_settings(url))
        await post_tasks(service, 2)
        await caught_up(service, url)
        await execute_raw(url, f"UPDATE events SET created_at = {ago(url, 10)}")
        sweeper = MessageSweeper(service.app.state.engine, 60, events_retention=7 * 86400)
        plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        other = await asyncpg.connect(plain)
        try:
            async with other.transaction():
                assert await other.fetchval("SELECT pg_try_advisory_xact_lock($1)", PRUNE_LOCK)
                assert await sweeper.prune_events() == 0  # another process is pruning
            assert await sweeper.prune_events() == 2
        finally:
            await other.close()


# --- kill -9 -----------------------------------------------------------------------------------

WRITERS = 4
KILL_AFTER = 200  # 2xx writes before the kill
MAX_WRITES = 400  # per writer: bounded whatever happens
RAW_AT_KILL = 5  # rows committed by another connection while the process is frozen


class Subscriber:
    """A WebSocket client on `global` that records every task.created it receives."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self, url: str) -> None:
        ws = await connect(url, max_size=None, open_timeout=10)
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "connected"
        await ws.send(orjson.dumps({"type": "subscribe", "channel": "global", "id": "s"}))
        while True:
            reply = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            if reply.get("id") == "s":
                assert reply.get("success") is True, reply
                break
        self._task = asyncio.create_task(self._read(ws))

    async def _read(self, ws: Any) -> None:
        try:
            async for raw in ws:
                frame = orjson.loads(raw)
                if frame.get("event") == "task.created":
                    self.frames.append(frame)
        except ConnectionClosed:
            pass

    async def stopped(self) -> None:
        if self._task is not None:
            await asyncio.wait_for(self._task, 15)


async def rest_history(api_port: int, channel: str) -> list[dict[str, Any]]:
    """Every retained publication of `channel`, paged over GET /api/channels/…/history."""
    publications: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1000}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as http:
        while True:
            page = (await http.get(f"/api/channels/{channel}/history", params=params)).json()
            publications += page["publications"]
            if not page["publications"] or page["publications"][-1]["offset"] >= page["offset"]:
                return publications
            params = {
                "limit": 1000,
                "since_offset": page["publications"][-1]["offset"],
                "since_epoch": page["epoch"],
            }


async def insert_raw_frozen(database_url: str, ids: list[str]) -> None:
    """Commit rows from a connection of its own (may wait for locks the frozen process held)."""
    values = ", ".join(f"('{i}', 'raw')" for i in ids)
    await execute_raw(database_url, f"INSERT INTO tasks (id, title) VALUES {values}")


async def kill_nine(tmp_path: Path, database_url: str, env: dict[str, str]) -> None:
    nodes = Nodes(
        tmp_path,
        {
            "DATABASE_URL": database_url,
            "MIGRATE_ON_START": "true",
            "HISTORY_GLOBAL_SIZE": "100000",
            **env,
        },
    )
    try:
        node = await nodes.start("before", NODE_ID="durable")
        live = Subscriber()
        await live.start(node.ws)
        ok: set[str] = set()
        errors: list[str] = []

        async def writer(n: int) -> None:
            base = f"http://127.0.0.1:{node.api_port}"
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                for i in range(MAX_WRITES):
                    try:
                        response = await http.post("/api/tasks", json={"title": f"w{n}-{i}"})
                    except httpx.HTTPError as exc:
                        errors.append(type(exc).__name__)  # in flight at the kill
                        return
                    if response.is_success:
                        ok.add(response.json()["id"])

        writers = [asyncio.create_task(writer(n)) for n in range(WRITERS)]

        async def enough() -> bool:
            assert not all(w.done() for w in writers), "writers stopped before the kill"
            return len(ok) >= KILL_AFTER

        await eventually(enough, 60)
        # Freeze, commit rows it cannot deliver, then SIGKILL: in-flight REST writes fail,
        # committed rows with undelivered events stay behind the recorded cursor.
        node.process.send_signal(signal.SIGSTOP)
        raw = [f"raw{i}" for i in range(RAW_AT_KILL)]
        inserting = asyncio.create_task(insert_raw_frozen(database_url, raw))
        await asyncio.sleep(0.3)
        await node.stop(signal.SIGKILL)
        await asyncio.gather(*writers)
        await inserting
        await live.stopped()
        expected = ok | set(raw)
        live_ids = {f["data"]["task_id"] for f in live.frames}
        live_event_ids = [f["data"]["event_id"] for f in live.frames]
        assert len(live_event_ids) == len(set(live_event_ids))

        after = await nodes.start("after", NODE_ID="durable")

        async def delivered() -> list[dict[str, Any]] | None:
            history = await rest_history(after.api_port, "global")
            seen = {p["data"]["task_id"] for p in history if p["event"] == "task.created"}
            return history if expected <= live_ids | seen else None

        try:
            history = await eventually(delivered, 30)
        except AssertionError:
            history = await rest_history(after.api_port, "global")
        created = [p for p in history if p["event"] == "task.created"]
        after_ids = {p["data"]["task_id"] for p in created}
        lost = expected - live_ids - after_ids
        assert not lost, f"{len(lost)} acknowledged writes never delivered: {sorted(lost)[:5]}"

        # Every acknowledged write is stored.
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{after.api_port}", timeout=10
        ) as http:
            limit = asyncio.Semaphore(8)

            async def status(task_id: str) -> int:
                async with limit:
                    return (await http.get(f"/api/tasks/{task_id}")).status_code

            statuses = await asyncio.gather(*(status(t) for t in sorted(expected)))
        assert set(statuses) == {200}

        # A subscriber after the restart: a plain subscribe, then the history before it.
        late = Subscriber()
        await late.start(after.ws)
        after_event_ids = [p["data"]["event_id"] for p in created]
        assert len(after_event_ids) == len(set(after_event_ids))  # none twice after restart
        shared_history = env.get("BROKER") == "redis"
        if shared_history:
            # One stream across the kill: the history holds the live ones too, each once.
            assert set(live_event_ids) <= set(after_event_ids)
            redelivered = 0
        else:
            redelivered = len(set(live_event_ids) & set(after_event_ids))
        undelivered_at_kill = len(expected - live_ids)
        catchup = [line for line in after.tail(200).splitlines() if "caught up to" in line]
        if catchup:
            print("\n" + str(orjson.loads(catchup[-1]).get("msg", catchup[-1])))
        print(
            f"\nkill -9 ({env.get('BROKER', 'memory')} broker, "
            f"{make_url(database_url).get_backend_name()}): {len(ok)} REST writes acknowledged, "
            f"{len(errors)} in flight at the kill, {RAW_AT_KILL} raw rows committed while "
            f"frozen; {len(live_ids & expected)} delivered live before the kill, "
            f"{undelivered_at_kill} delivered only after the restart, {redelivered} delivered "
            f"again after the restart, lost 0, duplicates 0"
        )
        await asyncio.sleep(0.1)
        assert not late.frames or all(
            f["data"]["task_id"] not in expected for f in late.frames
        )  # nothing old arrives live after the catch-up
    finally:
        await nodes.close()


async def test_kill_nine_sqlite(tmp_path: Path) -> None:
    await kill_nine(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'durable.db'}", {})


@pytest.mark.postgres
async def test_kill_nine_postgres(tmp_path: Path, postgres_url: str) -> None:
    async with postgres_database(postgres_url) as url:
        await kill_nine(tmp_path, url, {})


@pytest.mark.postgres
@pytest.mark.redis
async def test_kill_nine_postgres_redis(tmp_path: Path, postgres_url: str, redis_url: str) -> None:
    prefix = f"t{secrets.token_hex(5)}"
    async with postgres_database(postgres_url) as url:
        try:
            await kill_nine(
                tmp_path, url, {"BROKER": "redis", "REDIS_URL": redis_url, "BROKER_PREFIX": prefix}
            )
        finally:
            await _drop_prefix(redis_url, prefix)
