"""PostgreSQL: the outbox triggers take the writers' lock at COMMIT (migration 0008).

An open transaction that has changed a task holds no lock that other writers need, the event
ids still become visible in id order (so the bridge, reading "id > last id", skips nothing),
and each row change is its own event with the data its statement wrote.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest

from tests.conftest import ClientFactory, ServiceFactory
from tests.databases import _plain, api, data_settings, postgres_database
from tests.test_bridge import collect

pytestmark = pytest.mark.postgres


@pytest.fixture
async def database_url(postgres_url: str) -> AsyncIterator[str]:
    async with postgres_database(postgres_url) as url:
        yield url


async def events(connection: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await connection.fetch("SELECT id, event, entity_id, data FROM events ORDER BY id")
    return [dict(row) for row in rows]


async def test_an_open_transaction_holds_back_no_other_writer(
    database_url: str, start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    """A psql session changes a task and sits in its transaction; meanwhile the API's PATCH of
    another task is answered and its event delivered. The late commit's event comes after,
    with the larger id: nothing skipped, nothing out of order."""
    service = await start_service(**data_settings(database_url))
    watcher = await ws_client(service)
    await watcher.subscribe("global")
    async with api(service) as http:
        for name in ("slow", "fast"):
            made = await http.post("/api/tasks", json={"id": name, "title": name})
            assert made.status_code == 201
        assert [e["event"] for e in await collect(watcher, 2)] == ["task.created"] * 2

        other = await asyncpg.connect(_plain(database_url))
        try:
            # Before 0008 this statement took the outbox lock and kept it to the COMMIT.
            slow = other.transaction()
            await slow.start()
            await other.execute("UPDATE tasks SET title = 'slow, changed' WHERE id = 'slow'")

            answer = await asyncio.wait_for(
                http.patch("/api/tasks/fast", json={"title": "fast, changed"}), timeout=5.0
            )
            assert answer.status_code == 200, answer.text
            fast = (await collect(watcher, 1))[0]
            assert fast["event"] == "task.updated" and fast["data"]["task_id"] == "fast"

            await slow.commit()
        finally:
            await other.close()
        late = (await collect(watcher, 1))[0]
        assert late["data"]["task_id"] == "slow" and late["data"]["title"] == "slow, changed"
        assert late["data"]["event_id"] > fast["data"]["event_id"]


async def test_ids_become_visible_in_id_order(
    database_url: str, start_service: ServiceFactory
) -> None:
    """Two transactions with events pending: the one that commits first takes the smaller id,
    so a reader that has seen id N never finds a row below N appear later."""
    await start_service(**data_settings(database_url))  # migrates the database
    first = await asyncpg.connect(_plain(database_url))
    second = await asyncpg.connect(_plain(database_url))
    # Before 0008 the second UPDATE waited for the first transaction's outbox lock.
    await second.execute("SET lock_timeout = '5s'")
    try:
        await first.execute("INSERT INTO tasks (id, title) VALUES ('a', 'a'), ('b', 'b')")
        head = (await events(first))[-1]["id"]
        one, two = first.transaction(), second.transaction()
        await one.start()
        await two.start()
        await first.execute("UPDATE tasks SET title = 'a2' WHERE id = 'a'")  # first to write
        await second.execute("UPDATE tasks SET title = 'b2' WHERE id = 'b'")
        await two.commit()  # first to commit
        seen = [e for e in await events(first) if e["id"] > head]
        assert [e["entity_id"] for e in seen] == ["b"]
        await one.commit()
        after = [e for e in await events(first) if e["id"] > head]
        assert [e["entity_id"] for e in after] == ["b", "a"]
        assert after[0]["id"] == seen[0]["id"]
    finally:
        await first.close()
        await second.close()


async def test_each_change_of_a_row_is_its_own_event(
    database_url: str, start_service: ServiceFactory
) -> None:
    """A deferred trigger still sees the row as its own statement left it."""
    await start_service(**data_settings(database_url))
    connection = await asyncpg.connect(_plain(database_url))
    try:
        async with connection.transaction():
            await connection.execute("INSERT INTO tasks (id, title) VALUES ('t', 'one')")
            await connection.execute("UPDATE tasks SET title = 'two' WHERE id = 't'")
            await connection.execute("UPDATE tasks SET status = 'failed' WHERE id = 't'")
            # Nothing is in the outbox before the COMMIT.
            assert await connection.fetchval("SELECT count(*) FROM events") == 0
        got = [(e["event"], orjson.loads(e["data"])) for e in await events(connection)]
    finally:
        await connection.close()
    assert [(event, data["title"], data["status"]) for event, data in got] == [
        ("task.created", "one", "pending"),
        ("task.updated", "two", "pending"),
        ("task.failed", "two", "failed"),
    ]
