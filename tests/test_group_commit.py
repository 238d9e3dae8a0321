"""Group commit (app/db/group_commit.py): concurrent inserts share a transaction, and each
caller still gets its own answer — its rows committed, or its own error with nothing kept.

First the GroupCommit on a table of its own (both databases), then the service: concurrent
POST /api/tasks and /api/messages, every one answered, every event delivered once, every
inbox seq given once and without a gap, and a taken id refused for its request alone.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db.engine import create_engine, create_sessionmaker, on_commit
from app.db.group_commit import GroupCommit, Taken
from tests.conftest import ClientFactory, ServiceFactory
from tests.databases import BACKENDS, api, data_settings, fresh_database, postgres_database
from tests.test_observability import scrape

metadata = MetaData()
notes = Table(
    "gc_notes",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("body", String(100)),
    Column("n", Integer, nullable=True),
)


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request, tmp_path) as url:
        yield url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


async def stored(engine: AsyncEngine) -> dict[str, tuple[str, int | None]]:
    async with engine.connect() as connection:
        rows = (await connection.execute(select(notes.c.id, notes.c.body, notes.c.n))).all()
    return {row.id: (row.body, row.n) for row in rows}


async def test_concurrent_inserts_share_transactions(engine: AsyncEngine) -> None:
    sessions = create_sessionmaker(engine)
    commits: list[int] = []
    on_commit(sessions, lambda: commits.append(1))
    writes = GroupCommit(sessions)
    await asyncio.gather(
        *(writes.insert(notes, {"id": f"n{i}", "body": f"b{i}"}) for i in range(100))
    )
    assert await stored(engine) == {f"n{i}": (f"b{i}", None) for i in range(100)}
    # All hundred were handed in before the writer ran: one transaction, not a hundred, and
    # the bridge is woken once.
    assert writes.writes == 100 and writes.batches == 1 and len(commits) == 1
    # One more, alone: written at once, with no timer to wait for.
    await writes.insert(notes, {"id": "last", "body": "b"})
    assert writes.batches == 2 and len(commits) == 2


async def test_every_commit_hook_hears_every_commit_that_wrote(engine: AsyncEngine) -> None:
    """The bridge and the webhooks both register a hook; each hears each commit that wrote
    (the first hook's listener had cleared the mark the second read), none a read-only one."""
    sessions = create_sessionmaker(engine)
    heard: list[str] = []
    on_commit(sessions, lambda: heard.append("bridge"))
    on_commit(sessions, lambda: heard.append("webhooks"))
    writes = GroupCommit(sessions)
    await writes.insert(notes, {"id": "a", "body": "a"})
    assert heard == ["bridge", "webhooks"]
    async with sessions() as db:
        await db.execute(select(notes.c.id))
        await db.commit()
    assert heard == ["bridge", "webhooks"]


async def test_a_taken_id_is_refused_alone_and_fails_no_batch(engine: AsyncEngine) -> None:
    writes = GroupCommit(create_sessionmaker(engine))
    await writes.insert(notes, {"id": "taken", "body": "first"})
    wanted = [f"n{i}" for i in range(10)]
    wanted[3] = wanted[7] = "taken"  # already there: both refused
    wanted[5] = wanted[6] = "twice"  # twice in the batch: the first one wins
    results = await asyncio.gather(
        *(writes.insert(notes, {"id": ident, "body": f"b{i}"}) for i, ident in enumerate(wanted)),
        return_exceptions=True,
    )
    failed = [i for i, result in enumerate(results) if isinstance(result, Taken)]
    assert failed == [3, 6, 7] and results.count(None) == 7
    expected = {ident: (f"b{i}", None) for i, ident in enumerate(wanted) if i not in failed}
    assert await stored(engine) == {"taken": ("first", None), **expected}
    # One transaction for the ten: the taken ids were left out, not retried one by one.
    assert writes.batches == 2 and writes.writes == 8


async def test_rows_of_different_columns_and_a_prepare_step(engine: AsyncEngine) -> None:
    """Each set of columns is its own statement; a prepare step fills values in the batch's
    transaction, for the rows that will be inserted only, and the caller reads them."""
    writes = GroupCommit(create_sessionmaker(engine))
    prepared: list[int] = []

    async def number(db: AsyncSession, rows: list[dict[str, Any]]) -> None:
        prepared.append(len(rows))
        for position, row in enumerate(rows):
            row["n"] = position + 100

    writes.prepare(notes, number)
    await writes.insert(notes, {"id": "taken", "body": "x"})
    rows = [{"id": f"n{i}", "body": "b"} if i % 2 else {"id": f"n{i}"} for i in range(6)]
    rows.append({"id": "taken", "body": "again"})
    results = await asyncio.gather(
        *(writes.insert(notes, row) for row in rows), return_exceptions=True
    )
    assert results[:6] == [None] * 6 and isinstance(results[6], Taken)
    # Numbered within their statement: n0, n2, n4 (no `body`), then n1, n3, n5.
    assert await stored(engine) == {
        "taken": ("x", 100),
        "n0": (None, 100),
        "n2": (None, 101),
        "n4": (None, 102),
        "n1": ("b", 100),
        "n3": ("b", 101),
        "n5": ("b", 102),
    }
    assert [row.get("n") for row in rows] == [100, 100, 101, 101, 102, 102, None]
    # Once alone; for the batch, once per statement, the taken id left out of the second.
    assert prepared == [1, 3, 3]


async def test_a_failing_batch_is_written_write_by_write(engine: AsyncEngine) -> None:
    """A batch that fails for another reason is rolled back and retried alone: only the
    caller whose row caused it gets the error, and nothing of that row stays."""
    writes = GroupCommit(create_sessionmaker(engine))

    async def refuse_bad(db: AsyncSession, rows: list[dict[str, Any]]) -> None:
        if any(row["body"] == "bad" for row in rows):
            raise ValueError("bad row")

    writes.prepare(notes, refuse_bad)
    bodies = ["ok", "ok", "bad", "ok", "ok"]
    results = await asyncio.gather(
        *(writes.insert(notes, {"id": f"n{i}", "body": b}) for i, b in enumerate(bodies)),
        return_exceptions=True,
    )
    assert [type(result) for result in results] == [type(None)] * 2 + [ValueError] + [
        type(None)
    ] * 2
    assert set(await stored(engine)) == {"n0", "n1", "n3", "n4"}
    assert writes.batches == 4  # each of the four written alone after the batch failed


async def test_a_cancelled_caller_still_commits_and_close_waits(engine: AsyncEngine) -> None:
    writes = GroupCommit(create_sessionmaker(engine))
    first = asyncio.create_task(writes.insert(notes, {"id": "a", "body": "a"}))
    gone = asyncio.create_task(writes.insert(notes, {"id": "b", "body": "b"}))
    await asyncio.sleep(0)  # both handed in
    gone.cancel()
    await writes.close()
    await first
    assert gone.cancelled()
    assert set(await stored(engine)) == {"a", "b"}


# --- the service ------------------------------------------------------------------------------


async def test_concurrent_writes_through_the_api(
    database_url: str, start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(**data_settings(database_url))
    watcher = await ws_client(service)
    await watcher.subscribe("global")
    writes: GroupCommit = service.app.state.runtime.writes
    async with api(service) as http:
        first = await http.post("/api/tasks", json={"id": "taken", "title": "t"})
        assert first.status_code == 201
        await watcher.next_event("task.created")
        tasks = [{"title": f"t{i}"} for i in range(40)]
        tasks[10] = tasks[20] = {"id": "taken", "title": "again"}
        messages = [
            {"from_agent": "boss", "to_agent": f"agent{i % 4}", "content": f"m{i}"}
            for i in range(40)
        ]
        before = writes.batches
        answers = await asyncio.gather(
            *(http.post("/api/tasks", json=body) for body in tasks),
            *(http.post("/api/messages", json=body) for body in messages),
        )
        batches = writes.batches - before
        task_answers, message_answers = answers[:40], answers[40:]
        assert [r.status_code for r in task_answers].count(201) == 38
        assert {r.json()["code"] for r in task_answers if r.status_code != 201} == {
            "ALREADY_EXISTS"
        }
        assert all(r.status_code == 201 for r in message_answers)
        created = {r.json()["id"] for r in task_answers if r.status_code == 201}
        sent = [r.json() for r in message_answers]
        # Each recipient's inbox: seqs 1..10, each once, in the order they were committed.
        by_agent: dict[str, list[int]] = {}
        for message in sent:
            by_agent.setdefault(message["to_agent"], []).append(message["seq"])
        assert {agent: sorted(seqs) for agent, seqs in by_agent.items()} == {
            f"agent{i}": list(range(1, 11)) for i in range(4)
        }
        for agent in by_agent:
            page = (await http.get(f"/api/agents/{agent}/inbox")).json()
            assert [m["seq"] for m in page["messages"]] == list(range(1, 11))
        # Answers are what is stored.
        for answer in task_answers[:3]:
            assert (await http.get(f"/api/tasks/{answer.json()['id']}")).json() == answer.json()
    seen: Counter[str] = Counter()
    while len(seen) < len(created) + len(sent):
        frame = await watcher.next_event()
        if frame["event"] == "task.created":
            seen[frame["data"]["task_id"]] += 1
        elif frame["event"] == "message.new":
            seen[frame["data"]["message_id"]] += 1
    assert set(seen) == created | {m["id"] for m in sent} and set(seen.values()) == {1}
    await watcher.no_frame(0.3)
    # 80 requests in far fewer transactions (a failed batch adds one per write retried alone).
    assert batches < 80
    samples = await scrape(service.settings.ws_port)
    assert samples[("cm_group_commit_transactions_total", ())] == writes.batches
    assert samples[("cm_group_commit_writes_total", ())] == writes.writes >= 79


@pytest.fixture
async def shared_postgres(postgres_url: str) -> AsyncIterator[str]:
    """One PostgreSQL database for two nodes (set up before them, dropped after them)."""
    async with postgres_database(postgres_url) as url:
        yield url


@pytest.mark.postgres
async def test_two_nodes_take_inbox_seqs_in_turn(
    shared_postgres: str, start_service: ServiceFactory
) -> None:
    """Two nodes' batches take seqs from the same inbox counters: each seq once, no gap, no
    deadlock (a batch locks its recipients in id order), and every message answered 201."""
    first = await start_service(**data_settings(shared_postgres))
    second = await start_service(**data_settings(shared_postgres))
    bodies = [
        {"from_agent": "boss", "to_agent": f"r{(i * 7) % 5}", "content": f"m{i}"}
        for i in range(200)
    ]
    async with api(first) as one, api(second) as other:
        answers = await asyncio.gather(
            *(
                (one if i % 2 else other).post("/api/messages", json=body)
                for i, body in enumerate(bodies)
            )
        )
        assert [answer.status_code for answer in answers] == [201] * 200
        by_agent: dict[str, list[int]] = {}
        for answer in answers:
            sent = answer.json()
            by_agent.setdefault(sent["to_agent"], []).append(sent["seq"])
        assert {agent: sorted(seqs) for agent, seqs in by_agent.items()} == {
            f"r{n}": list(range(1, 41)) for n in range(5)
        }
        page = (await one.get("/api/agents/r3/inbox", params={"limit": 100})).json()
        assert [m["seq"] for m in page["messages"]] == list(range(1, 41))
    both = first.app.state.runtime.writes.writes + second.app.state.runtime.writes.writes
    assert both == 200


async def test_a_refused_message_takes_no_seq(
    database_url: str, start_service: ServiceFactory
) -> None:
    service = await start_service(**data_settings(database_url))
    async with api(service) as http:
        bodies: list[dict[str, Any]] = [
            {"from_agent": "boss", "to_agent": "solo", "content": f"m{i}"} for i in range(10)
        ]
        for i in (2, 5, 8):
            bodies[i]["id"] = "same"
        answers = await asyncio.gather(*(http.post("/api/messages", json=b) for b in bodies))
        codes = [answer.status_code for answer in answers]
        assert codes.count(201) == 8 and codes.count(409) == 2
        seqs = sorted(answer.json()["seq"] for answer in answers if answer.status_code == 201)
        assert seqs == list(range(1, 9))
        follow = await http.post("/api/messages", json=bodies[0])
        assert follow.json()["seq"] == 9  # no gap left behind
