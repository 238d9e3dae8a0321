"""ContextScope (app/api/middleware.py) closes the session of every domain context a request
was given (app/api/deps.py: get_context), whatever the request's end: answered, refused
after reading, failed after writing, or cancelled.

The contexts are recorded as the runtime hands them out, so nothing but the middleware can
close them: a test that only watched the pool would pass on the garbage collector's clean-up.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from starlette.types import Message

from app.api.middleware import CONTEXTS, ContextScope
from app.db.engine import create_engine, create_sessionmaker
from app.domain.context import Context
from app.realtime.permissions import Principal
from app.server import Service
from tests.conftest import ServiceFactory
from tests.databases import api


def record_contexts(service: Service) -> list[Context]:
    """Every Context the service's runtime makes from now on (each still made by it)."""
    runtime = service.app.state.runtime
    made: list[Context] = []
    make = runtime.context

    def recording(actor: Principal) -> Context:
        context: Context = make(actor)
        made.append(context)
        return context

    runtime.context = recording
    return made


async def pool_drained(service: Service, within: float = 5.0) -> int:
    """The connections still checked out once they are all in, or `within` has passed."""
    pool: Any = service.app.state.runtime.engine.pool
    deadline = asyncio.get_running_loop().time() + within
    while pool.checkedout() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    checked_out: int = pool.checkedout()
    return checked_out


async def test_every_request_s_session_is_closed_however_it_ended(
    start_service: ServiceFactory,
) -> None:
    service = await start_service()
    made = record_contexts(service)
    async with api(service) as http:
        created = await http.post("/api/tasks", json={"title": "t"})
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        answers = await asyncio.gather(
            *(http.get("/api/tasks") for _ in range(8)),  # reads: a session each
            *(http.get("/api/tasks/task-unknown") for _ in range(4)),  # read, then 404
            # Reads the dependency, then refuses it: 4xx with the session's transaction open.
            *(
                http.patch(f"/api/tasks/{task_id}", json={"depends_on": ["task-missing"]})
                for _ in range(4)
            ),
            # Writes new dependency rows in the request's own session and commits them.
            http.patch(f"/api/tasks/{task_id}", json={"depends_on": []}),
            http.patch(f"/api/tasks/{task_id}", json={"status": "in_progress"}),  # shared
        )
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses.count(200) == 10, [a.text for a in answers]
    assert statuses.count(404) + statuses.count(422) + statuses.count(409) == 8, statuses
    assert len(made) >= len(answers)
    assert [context for context in made if context.has_session()] == []
    assert await pool_drained(service) == 0
    # A refused PATCH kept nothing: the task is as the accepted ones left it.
    async with api(service) as http:
        task = (await http.get(f"/api/tasks/{task_id}")).json()
    assert task["status"] == "in_progress" and task["depends_on"] == []


async def test_a_cancelled_request_still_closes_its_session(tmp_path: Path) -> None:
    """Cancelled while its session holds a transaction: the shielded close still runs."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'scope.db'}")
    sessions = create_sessionmaker(engine)
    made: list[Context] = []
    inside = asyncio.Event()

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        context = Context(None, None, None, None, None, sessions)  # type: ignore[arg-type]
        scope[CONTEXTS].append(context)
        made.append(context)
        await context.db.execute(text("CREATE TABLE IF NOT EXISTS t (n INTEGER)"))
        await context.db.execute(text("INSERT INTO t VALUES (1)"))  # uncommitted
        inside.set()
        await asyncio.Event().wait()  # until cancelled

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        pass

    request = asyncio.create_task(ContextScope(endpoint)({"type": "http"}, receive, send))
    await asyncio.wait_for(inside.wait(), 5)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert not made[0].has_session()
    pool: Any = engine.pool
    assert pool.checkedout() == 0
    async with sessions() as db:  # rolled back: the insert is not there
        assert (await db.execute(text("SELECT count(*) FROM t"))).scalar_one() == 0
    await engine.dispose()


async def test_a_write_that_reads_nothing_opens_no_session(start_service: ServiceFactory) -> None:
    """A task without dependencies and a message go to the group commit alone: their requests
    open no session at all (opening and closing one was ≈ 5 % of a create's CPU). A task with
    dependencies reads them, in a session of its own."""
    service = await start_service()
    runtime = service.app.state.runtime
    opened: list[Principal] = []
    make = runtime.context

    def counting(actor: Principal) -> Context:
        context: Context = make(actor)
        sessions = context.sessions

        def session() -> Any:
            opened.append(actor)
            return sessions()

        context.sessions = session
        return context

    runtime.context = counting
    async with api(service) as http:
        first = await http.post("/api/tasks", json={"title": "t"})
        assert first.status_code == 201, first.text
        message = {"from_agent": "a", "to_agent": "b", "content": "hi"}
        assert (await http.post("/api/messages", json=message)).status_code == 201
        assert opened == []
        dependent = {"title": "u", "depends_on": [first.json()["id"]]}
        assert (await http.post("/api/tasks", json=dependent)).status_code == 201
    assert len(opened) == 1
