"""Shared transaction (app/db/shared_transaction.py): concurrent read-check-write calls run in
one transaction, and each caller still gets its own answer — its write committed, or its own
error with nothing of it kept.

First the SharedTransaction on a table of its own (both databases), then the service:
concurrent PATCHes of tasks and subtasks, every one answered as the GET that follows, every
event delivered once; racing PATCHes of one task, exactly one winner; a refused PATCH among
accepted ones, refused alone; and two nodes changing the same tasks on PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core.security import Role, TokenCodec
from app.db.engine import create_engine, create_sessionmaker, on_commit
from app.db.shared_transaction import Retry, SharedTransaction
from app.domain.errors import Conflict, DomainError, Forbidden
from tests.conftest import ClientFactory, ServiceFactory
from tests.databases import BACKENDS, api, data_settings, fresh_database, postgres_database
from tests.test_observability import scrape

metadata = MetaData()
counters = Table(
    "st_counters",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("n", Integer, nullable=False),
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
        await connection.execute(counters.insert(), [{"id": f"c{i}", "n": 0} for i in range(10)])
    yield engine
    await engine.dispose()


async def stored(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as connection:
        rows = (await connection.execute(select(counters.c.id, counters.c.n))).all()
    return {row.id: row.n for row in rows}


def bump(ident: str, refuse: bool = False, fail_after_write: bool = False) -> Any:
    """A read-check-write call: read the counter, refuse (before writing) or add one."""

    async def work(db: AsyncSession) -> int:
        n = await db.scalar(select(counters.c.n).where(counters.c.id == ident))
        if n is None:
            raise DomainError(f"no counter {ident}", "NOT_FOUND")
        if refuse:
            raise Forbidden(f"not yours: {ident}")
        changed = await db.execute(
            update(counters).where(counters.c.id == ident, counters.c.n == n).values(n=n + 1)
        )
        if changed.rowcount != 1:
            raise Retry(Conflict(f"{ident} changed"))
        if fail_after_write:
            raise Conflict(f"refused after writing {ident}")
        return int(n) + 1

    return work


def shared(engine: AsyncEngine) -> SharedTransaction:
    return SharedTransaction(create_sessionmaker(engine), refusals=(DomainError,))


async def test_concurrent_calls_share_one_transaction(engine: AsyncEngine) -> None:
    sessions = create_sessionmaker(engine)
    commits: list[int] = []
    on_commit(sessions, lambda: commits.append(1))
    runner = SharedTransaction(sessions, refusals=(DomainError,))
    # Forty calls on ten counters: each reads what the calls before it in the batch wrote.
    results = await asyncio.gather(*(runner.run(bump(f"c{i % 10}")) for i in range(40)))
    assert sorted(results) == sorted([1, 2, 3, 4] * 10)
    assert await stored(engine) == {f"c{i}": 4 for i in range(10)}
    assert runner.batches == 1 and runner.calls == 40 and runner.split == 0
    assert len(commits) == 1  # the bridge is woken once
    # One more, alone: run at once, no timer.
    assert await runner.run(bump("c0")) == 5
    assert runner.batches == 2 and len(commits) == 2


async def test_a_refusal_before_writing_is_answered_alone(engine: AsyncEngine) -> None:
    runner = shared(engine)
    calls = [bump(f"c{i}", refuse=i in (2, 5)) for i in range(8)] + [bump("missing")]
    results = await asyncio.gather(*(runner.run(call) for call in calls), return_exceptions=True)
    assert [type(r).__name__ for r in results] == (
        ["int"] * 2 + ["Forbidden"] + ["int"] * 2 + ["Forbidden"] + ["int"] * 2 + ["DomainError"]
    )
    assert await stored(engine) == {f"c{i}": 0 if i in (2, 5) else 1 for i in range(10)} | {
        "c8": 0,
        "c9": 0,
    }
    # Refused before writing: nothing to undo, so the batch was not split.
    assert runner.batches == 1 and runner.split == 0


async def test_an_error_after_a_write_splits_the_batch(engine: AsyncEngine) -> None:
    """A refusal after a write (or any other error) leaves the transaction in doubt: the batch
    is rolled back and each call run alone; only the failing call's caller gets an error, and
    nothing of its write stays."""
    runner = shared(engine)
    calls = [bump(f"c{i}", fail_after_write=i == 3) for i in range(6)]
    calls.append(bump("c0"))  # the second bump of c0 in the batch: 2 once committed
    results = await asyncio.gather(*(runner.run(call) for call in calls), return_exceptions=True)
    assert [r if isinstance(r, int) else type(r).__name__ for r in results] == [
        1,
        1,
        1,
        "Conflict",
        1,
        1,
        2,
    ]
    assert await stored(engine) == {f"c{i}": 0 if i == 3 else 1 for i in range(10)} | {
        "c0": 2,
        "c6": 0,
        "c7": 0,
        "c8": 0,
        "c9": 0,
    }
    assert runner.split == 1 and runner.batches == 6  # each of the six that commit, alone

    async def broken(db: AsyncSession) -> None:
        await db.execute(update(counters).values(n=counters.c.n + 100))
        raise ValueError("a bug, not a refusal")

    results = await asyncio.gather(
        runner.run(bump("c9")), runner.run(broken), return_exceptions=True
    )
    assert results[0] == 1 and isinstance(results[1], ValueError)
    assert (await stored(engine))["c9"] == 1 and (await stored(engine))["c1"] == 1


async def test_retry_runs_a_call_again_and_gives_up_in_the_end(engine: AsyncEngine) -> None:
    runner = shared(engine)
    misses = {"c1": 2}  # the first two runs find c1 changed under them, then it goes

    async def flaky(db: AsyncSession) -> str:
        if misses["c1"]:
            misses["c1"] -= 1
            raise Retry(Conflict("c1 changed"))
        await bump("c1")(db)
        return "done"

    async def never(db: AsyncSession) -> None:
        raise Retry(Conflict("c2 keeps changing"))

    results = await asyncio.gather(
        runner.run(bump("c0")), runner.run(flaky), runner.run(never), return_exceptions=True
    )
    assert results[0] == 1 and results[1] == "done"
    assert isinstance(results[2], Conflict) and str(results[2]) == "c2 keeps changing"
    assert (await stored(engine))["c1"] == 1 and (await stored(engine))["c2"] == 0


class Deadlock(Exception):
    """What PostgreSQL's driver raises for a deadlock, as SQLAlchemy's asyncpg adapter sees it."""

    sqlstate = "40P01"


async def test_a_deadlock_splits_the_batch_and_the_call_runs_again(engine: AsyncEngine) -> None:
    """The server ended the transaction, committing nothing: the batch's calls run alone,
    and the one that met the deadlock again runs once more rather than failing."""
    runner = shared(engine)
    deadlocks = {"left": 2}  # in the batch, then in its first run alone

    async def meets_a_deadlock(db: AsyncSession) -> int:
        n: int = await bump("c4")(db)
        if deadlocks["left"]:
            deadlocks["left"] -= 1
            raise DBAPIError("UPDATE st_counters", {}, Deadlock("deadlock detected"))
        return n

    results = await asyncio.gather(runner.run(bump("c3")), runner.run(meets_a_deadlock))
    assert results == [1, 1] and runner.split == 1 and deadlocks["left"] == 0
    assert (await stored(engine))["c3"] == 1 and (await stored(engine))["c4"] == 1


async def test_calls_run_in_key_order(engine: AsyncEngine) -> None:
    """Row locks in one order on every node (calls of one key keep the order they came in)."""
    runner = shared(engine)
    seen: list[str] = []

    def mark(label: str) -> Any:
        async def work(db: AsyncSession) -> None:
            seen.append(label)

        return work

    keys = ["t3", "t1", "t2", "t1", ""]
    await asyncio.gather(*(runner.run(mark(f"{key}#{n}"), key=key) for n, key in enumerate(keys)))
    assert seen == ["#4", "t1#1", "t1#3", "t2#2", "t3#0"]


async def test_writers_run_batches_side_by_side(engine: AsyncEngine) -> None:
    """With two writers a batch waiting on the server does not hold up the next one (how
    PostgreSQL runs them); with one, the second call would wait behind the first."""
    runner = SharedTransaction(create_sessionmaker(engine), refusals=(DomainError,), writers=2)
    released = asyncio.Event()

    async def waits(db: AsyncSession) -> str:
        await asyncio.wait_for(released.wait(), 5)
        return "first"

    async def releases(db: AsyncSession) -> str:
        released.set()
        return "second"

    first = asyncio.create_task(runner.run(waits))
    await asyncio.sleep(0.05)  # the first writer holds it
    assert await asyncio.wait_for(runner.run(releases), 5) == "second"
    assert await first == "first"
    await runner.close()
    assert runner.batches == 2 and not runner._writers


async def test_a_cancelled_caller_still_commits_and_close_waits(engine: AsyncEngine) -> None:
    runner = shared(engine)
    first = asyncio.create_task(runner.run(bump("c0")))
    gone = asyncio.create_task(runner.run(bump("c1")))
    await asyncio.sleep(0)  # both handed in
    gone.cancel()
    await runner.close()
    assert await first == 1 and gone.cancelled()
    assert (await stored(engine))["c1"] == 1


# --- the service ------------------------------------------------------------------------------


async def test_concurrent_patches_through_the_api(
    database_url: str, start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(**data_settings(database_url))
    runner: SharedTransaction = service.app.state.runtime.shared
    watcher = await ws_client(service)
    await watcher.subscribe("global")
    async with api(service) as http:
        ids = []
        for i in range(30):
            created = await http.post("/api/tasks", json={"title": f"t{i}", "agent_id": "w"})
            ids.append(created.json()["id"])
        sub = await http.post(f"/api/tasks/{ids[0]}/subtasks", json={"title": "s"})
        sub_id = sub.json()["id"]
        for _ in range(31):
            await watcher.next_event()
        before = runner.batches
        answers = await asyncio.gather(
            *(
                http.patch(f"/api/tasks/{ident}", json={"status": "completed", "result": n})
                for n, ident in enumerate(ids)
            ),
            http.patch(f"/api/subtasks/{sub_id}", json={"status": "in_progress"}),
        )
        assert [a.status_code for a in answers] == [200] * 31, [a.text for a in answers]
        for answer in answers[:30]:
            assert (await http.get(f"/api/tasks/{answer.json()['id']}")).json() == answer.json()
        listed = (await http.get(f"/api/tasks/{ids[0]}/subtasks")).json()["items"]
        assert listed == [answers[30].json()]
        assert runner.batches - before < 31
    seen: Counter[str] = Counter()
    while sum(seen.values()) < 31:
        frame = await watcher.next_event()
        seen[frame["event"]] += 1
    assert seen == {"task.completed": 30, "subtask.updated": 1}
    await watcher.no_frame(0.3)
    samples = await scrape(service.settings.ws_port)
    assert samples[("cm_shared_transactions_total", ())] == runner.batches
    assert samples[("cm_shared_transaction_calls_total", ())] == runner.calls >= 31


async def test_racing_patches_of_one_task_have_one_winner(
    database_url: str, start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    """Concurrent PATCHes to different final states, most in one batch: the first moves the
    task, the others find it finished; one event. Each call reads what the calls before it in
    the batch wrote."""
    service = await start_service(**data_settings(database_url))
    watcher = await ws_client(service)
    await watcher.subscribe("global")
    async with api(service) as http:
        task = (await http.post("/api/tasks", json={"title": "contested"})).json()
        await watcher.next_event("task.created")
        statuses = ["completed", "failed", "cancelled"] * 4
        answers = await asyncio.gather(
            *(http.patch(f"/api/tasks/{task['id']}", json={"status": s}) for s in statuses)
        )
        # The first moves it; a PATCH to the status it reached changes nothing (200, no
        # event), and one to another final status is refused.
        winner = (await http.get(f"/api/tasks/{task['id']}")).json()
        for asked, answer in zip(statuses, answers, strict=True):
            if asked == winner["status"]:
                assert answer.status_code == 200 and answer.json() == winner, answer.text
            else:
                assert answer.status_code == 409, answer.text
                assert answer.json()["code"] in ("FINISHED", "ILLEGAL_TRANSITION")
    named = {"completed": "task.completed", "failed": "task.failed", "cancelled": "task.updated"}
    assert (await watcher.next_event())["event"] == named[winner["status"]]
    await watcher.no_frame(0.3)


async def test_a_refused_patch_among_accepted_ones_is_refused_alone(
    database_url: str, start_service: ServiceFactory
) -> None:
    """Token mode: each agent PATCHes its own task, one also tries another's. The intruder's
    PATCH is 403 and changes nothing; every other is 200 and committed."""
    service = await start_service(
        **data_settings(database_url), auth_mode="token", secret_key="s" * 64
    )
    codec = TokenCodec(service.settings)
    admin = {"Authorization": f"Bearer {codec.create('root', role=Role.ADMIN)}"}
    async with api(service) as http:
        for n in range(10):
            made = await http.post(
                "/api/tasks", json={"id": f"t{n}", "title": "t", "agent_id": f"a{n}"}, headers=admin
            )
            assert made.status_code == 201, made.text

        def as_agent(n: int) -> dict[str, str]:
            return {"Authorization": f"Bearer {codec.create(f'a{n}')}"}

        patches = [
            http.patch(f"/api/tasks/t{n}", json={"status": "in_progress"}, headers=as_agent(n))
            for n in range(10)
        ]
        patches.insert(
            4, http.patch("/api/tasks/t7", json={"status": "cancelled"}, headers=as_agent(3))
        )
        answers = await asyncio.gather(*patches)
        codes = [a.status_code for a in answers]
        assert codes == [200] * 4 + [403] + [200] * 6, [a.text for a in answers]
        for n in range(10):
            got = (await http.get(f"/api/tasks/t{n}", headers=admin)).json()
            assert got["status"] == "in_progress"


@pytest.fixture
async def shared_postgres(postgres_url: str) -> AsyncIterator[str]:
    """One PostgreSQL database for two nodes (set up before them, dropped after them)."""
    async with postgres_database(postgres_url) as url:
        yield url


@pytest.mark.postgres
async def test_two_nodes_change_the_same_tasks(
    shared_postgres: str, start_service: ServiceFactory
) -> None:
    """Two nodes' batches take row locks in no common order: PostgreSQL may find a deadlock
    and end one transaction, whose calls then run alone. Every PATCH is answered, none with a
    5xx, and each task moves once: to in_progress, then completed, in every node's view."""
    first = await start_service(**data_settings(shared_postgres))
    second = await start_service(**data_settings(shared_postgres))
    async with api(first) as one, api(second) as other:
        for n in range(20):
            made = await one.post("/api/tasks", json={"id": f"t{n}", "title": "t"})
            assert made.status_code == 201
        order = list(range(20))
        for status in ("in_progress", "completed"):
            answers = await asyncio.gather(
                *(one.patch(f"/api/tasks/t{n}", json={"status": status}) for n in order),
                *(other.patch(f"/api/tasks/t{n}", json={"status": status}) for n in order[::-1]),
            )
            assert all(a.status_code in (200, 409) for a in answers), [
                a.text for a in answers if a.status_code not in (200, 409)
            ]
            # Both may answer 200 for the same change: the second finds nothing to change.
            for n in order:
                got = (await other.get(f"/api/tasks/t{n}")).json()
                assert got["status"] == status
