"""Losing PostgreSQL connections: the bridge gets what was written meanwhile after it
reconnects (every event, none twice, in outbox order), and the request pool replaces the
connections the server closed before a request can meet one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import ClientFactory, ServiceFactory
from tests.databases import api, data_settings, postgres_database
from tests.test_bridge import collect

pytestmark = pytest.mark.postgres


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the bridge did not notice"
        await asyncio.sleep(0.01)


def _plain(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def test_events_written_while_the_listen_connection_is_down_arrive_once(
    start_service: ServiceFactory, ws_client: ClientFactory, postgres_url: str
) -> None:
    async with postgres_database(postgres_url) as url:
        # A long poll interval: only the NOTIFY and the reconnect's catch-up can deliver.
        service = await start_service(**data_settings(url, bridge_poll_interval=60))
        bridge = service.app.state.bridge
        await bridge.wait_listening()
        watcher = await ws_client(service)
        await watcher.subscribe("global")
        writer = await asyncpg.connect(_plain(url))
        admin = await asyncpg.connect(_plain(url))
        total = 80

        async def write() -> None:
            for i in range(total):
                await writer.execute(
                    "INSERT INTO tasks (id, title) VALUES ($1, 'raw')", f"t{i:03d}"
                )
                await asyncio.sleep(0.01)

        try:
            writing = asyncio.create_task(write())
            kills = 0
            for _ in range(3):
                await asyncio.sleep(0.15)
                lost_before = bridge.reconnects
                kills += await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = $1",
                    bridge.application_name,
                )
                # Until the bridge has noticed this loss (on a loaded machine that can take
                # longer than the pause above) and listens on a new connection.
                await _until(lambda before=lost_before: bridge.reconnects > before)
                await bridge.wait_listening()
            await writing
            assert kills == 3

            # Then everything of this database but our two connections: the pool too.
            await asyncio.sleep(0.05)
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() AND pid <> $1",
                writer.get_server_pid(),
            )
            await writer.execute("INSERT INTO tasks (id, title) VALUES ('last', 'raw')")

            frames = await collect(watcher, total + 1, timeout=30)
        finally:
            await writer.close()
            await admin.close()
        ids = [f["data"]["task_id"] for f in frames]
        assert ids == [f"t{i:03d}" for i in range(total)] + ["last"]
        offsets = [f["data"]["event_id"] for f in frames]
        assert offsets == sorted(set(offsets))
        await watcher.no_frame(0.5)
        assert bridge.reconnects >= 4


async def test_pooled_connections_the_server_closed_are_replaced_before_use(
    start_service: ServiceFactory, postgres_url: str
) -> None:
    """A restart or pg_terminate_backend closes every pooled connection; the next requests
    check out new ones (engine._refuse_closed), none answers 5xx, and every write is kept."""
    async with postgres_database(postgres_url) as url:
        service = await start_service(**data_settings(url))
        admin = await asyncpg.connect(_plain(url))
        try:
            async with api(service) as http:

                async def burst(prefix: str) -> list[int]:
                    async def one(i: int) -> int:
                        created = await http.post(
                            "/api/tasks", json={"id": f"{prefix}{i}", "title": "t"}
                        )
                        read = await http.get(f"/api/tasks/{prefix}{i}")
                        patched = await http.patch(f"/api/tasks/{prefix}{i}", json={"priority": 2})
                        return max(created.status_code, read.status_code, patched.status_code)

                    return list(await asyncio.gather(*(one(i) for i in range(12))))

                assert set(await burst("a")) == {201}  # the pool holds several connections now
                for round_ in range(3):
                    killed = await admin.fetchval(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                    assert killed >= 2
                    await asyncio.sleep(0.05)  # the closes reach the service's event loop
                    assert set(await burst(f"r{round_}-")) == {201}, round_
                listed = await http.get("/api/tasks", params={"limit": 500})
                assert len(listed.json()["items"]) == 48
        finally:
            await admin.close()


async def test_a_connection_lost_mid_request_is_a_503_that_says_so(
    start_service: ServiceFactory, postgres_url: str
) -> None:
    """The server ends the backend a PATCH is waiting on (behind a row lock): the answer is a
    503 DATABASE_CONNECTION_LOST, not a 500, and the next request is served."""
    async with postgres_database(postgres_url) as url:
        service = await start_service(**data_settings(url))
        admin = await asyncpg.connect(_plain(url))
        locker = await asyncpg.connect(_plain(url))
        try:
            async with api(service) as http:
                assert (await http.post("/api/tasks", json={"id": "t", "title": "t"})).is_success
                lock = locker.transaction()
                await lock.start()
                await locker.execute("SELECT 1 FROM tasks WHERE id = 't' FOR UPDATE")
                patching = asyncio.create_task(http.patch("/api/tasks/t", json={"priority": 3}))
                waiting: int | None = None
                async with asyncio.timeout(10):
                    while waiting is None:
                        await asyncio.sleep(0.02)
                        waiting = await admin.fetchval(
                            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                            " AND wait_event_type = 'Lock'"
                        )
                await admin.execute("SELECT pg_terminate_backend($1)", waiting)
                answer = await patching
                await lock.rollback()
                assert answer.status_code == 503, answer.text
                assert answer.json()["code"] == "DATABASE_CONNECTION_LOST"
                assert answer.headers["retry-after"] == "1"
                again = await http.patch("/api/tasks/t", json={"priority": 3})
                assert again.status_code == 200 and again.json()["priority"] == 3
        finally:
            await locker.close()
            await admin.close()
