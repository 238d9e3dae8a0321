"""The naive REST reference of the `rest-write` bench: FastAPI + SQLAlchemy 2 async ORM.

    python bench/rest_reference.py --database-url sqlite+aiosqlite:///ref.db --port 8000
    python bench/rest_reference.py --database-url postgresql+asyncpg://…/db --port 8000
    python bench/rest_reference.py --database-url memory: --port 8000    # the floor

What anyone writes in an afternoon: one `tasks` and one `messages` table (created on start),
pydantic models in and out, a session per request (a FastAPI dependency), one commit per
request, uvicorn with uvloop + httptools in one process, no access log (the service logs none
either: app/server.py `access_log=False`). Given what the service has where it is not code:
on SQLite the same PRAGMAs (WAL, synchronous=NORMAL, busy_timeout 5 s: app/db/engine.py), so
the ratio does not measure an fsync per commit; the engine's pools are SQLAlchemy's defaults.

    POST  /api/tasks        {title, description?, priority?}          → 201 the row
    PATCH /api/tasks/{id}   {status?, title?, description?, priority?} → 200 the row (404)
    POST  /api/tasks/claim  {agent_id}  the oldest highest-priority pending task → in_progress,
                            assigned to agent_id with a new lease_id; 200 the row, 204 when
                            none is pending. PostgreSQL: SELECT … FOR UPDATE SKIP LOCKED then
                            UPDATE; SQLite: UPDATE … WHERE id = (SELECT … LIMIT 1) RETURNING.
    POST  /api/tasks/{id}/complete  {lease_id}  → completed, 200 the row; 409 unless the task
                            holds that lease (404 unknown): read, check, write, as PATCH does.
    POST  /api/messages     {from_agent?, to_agent, content}            → 201 the row
    GET   /health

**Naive, and that is the point**: no events, no WebSocket, no outbox, no authentication or
ownership, no idempotency keys, no limits, no inbox sequence, no lease expiry (a lease is an
id the claim writes and the completion compares). It is the floor a
service doing a write per request stands on; context-manager does all of those on top, and
issue 20 asks it to be three times as fast anyway.

**The floor** (`--database-url memory:`, the bench's `floor` server): the same app, models and
routes with the rows in a dict instead of a database: no engine, no session, no SQL. What
uvicorn, FastAPI and pydantic alone cost per request on this machine, the ceiling of any
FastAPI service that answers these requests.
"""

# No `from __future__ import annotations`: FastAPI resolves the route annotations, and `Db`
# is local to build_app.
import argparse
import heapq
import itertools
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy import DateTime, Integer, String, Text, event, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(500))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    agent_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    from_agent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    to_agent: Mapped[str] = mapped_column(String(64), index=True)
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class TaskCreate(BaseModel):
    title: str
    description: str | None = None
    priority: int = 0


class TaskUpdate(BaseModel):
    status: str | None = None
    title: str | None = None
    description: str | None = None
    priority: int | None = None
    agent_id: str | None = None


class TaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    title: str
    description: str | None
    status: str
    priority: int
    agent_id: str | None
    lease_id: str | None = None
    created_at: datetime
    updated_at: datetime


class ClaimIn(BaseModel):
    agent_id: str


class CompleteIn(BaseModel):
    lease_id: str
    result: Any = None


def lease() -> str:
    return f"lease_{uuid.uuid4().hex}"


class MessageCreate(BaseModel):
    from_agent: str | None = None
    to_agent: str
    content: str


class MessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    from_agent: str | None
    to_agent: str
    content: str
    created_at: datetime


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # What the service sets (app/db/engine.py), so that the ratio measures code, not fsync.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def build_app(database_url: str) -> FastAPI:
    engine = create_async_engine(database_url)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    postgres = engine.dialect.name == "postgresql"

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    async def get_db() -> AsyncIterator[AsyncSession]:
        async with sessions() as session:
            yield session

    Db = Annotated[AsyncSession, Depends(get_db)]

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/tasks", status_code=201, response_model=TaskOut)
    async def create_task(body: TaskCreate, db: Db) -> Task:
        task = Task(id=f"task_{uuid.uuid4().hex}", **body.model_dump())
        db.add(task)
        await db.commit()
        return task

    @app.patch("/api/tasks/{task_id}", response_model=TaskOut)
    async def update_task(task_id: str, body: TaskUpdate, db: Db) -> Task:
        task = await db.get(Task, task_id)
        if task is None:
            raise HTTPException(404, "task not found")
        for name, value in body.model_dump(exclude_unset=True).items():
            setattr(task, name, value)
        task.updated_at = now()
        await db.commit()
        return task

    @app.post("/api/tasks/claim", response_model=TaskOut)
    async def claim_task(body: ClaimIn, db: Db) -> Task | Response:
        oldest = (
            select(Task.id)
            .where(Task.status == "pending")
            .order_by(Task.priority.desc(), Task.created_at)
            .limit(1)
        )
        if postgres:
            task_id = await db.scalar(oldest.with_for_update(skip_locked=True))
            if task_id is None:
                return Response(status_code=204)
            task = await db.get(Task, task_id)
            assert task is not None
            task.status, task.agent_id, task.updated_at = "in_progress", body.agent_id, now()
            task.lease_id = lease()
            await db.commit()
            return task
        claimed = await db.scalar(
            update(Task)
            .where(Task.id == oldest.scalar_subquery())
            .values(
                status="in_progress", agent_id=body.agent_id, lease_id=lease(), updated_at=now()
            )
            .returning(Task)
        )
        await db.commit()
        if claimed is None:
            return Response(status_code=204)
        return claimed

    @app.post("/api/tasks/{task_id}/complete", response_model=TaskOut)
    async def complete_task(task_id: str, body: CompleteIn, db: Db) -> Task:
        task = await db.get(Task, task_id)
        if task is None:
            raise HTTPException(404, "task not found")
        if task.status != "in_progress" or task.lease_id != body.lease_id:
            raise HTTPException(409, "not your lease")
        task.status, task.lease_id, task.updated_at = "completed", None, now()
        await db.commit()
        return task

    @app.post("/api/messages", status_code=201, response_model=MessageOut)
    async def send_message(body: MessageCreate, db: Db) -> Message:
        message = Message(id=f"msg_{uuid.uuid4().hex}", **body.model_dump())
        db.add(message)
        await db.commit()
        return message

    return app


def build_floor_app() -> FastAPI:
    """The routes above with the rows in memory: FastAPI's own cost per request, nothing else."""
    app = FastAPI()
    tasks: dict[str, TaskOut] = {}
    pending: list[tuple[int, int, str]] = []  # (-priority, sequence, id): heapq's claim order
    sequence = itertools.count()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/tasks", status_code=201, response_model=TaskOut)
    async def create_task(body: TaskCreate) -> TaskOut:
        stamp = now()
        task = TaskOut(
            id=f"task_{uuid.uuid4().hex}",
            status="pending",
            agent_id=None,
            created_at=stamp,
            updated_at=stamp,
            **body.model_dump(),
        )
        tasks[task.id] = task
        heapq.heappush(pending, (-task.priority, next(sequence), task.id))
        return task

    @app.patch("/api/tasks/{task_id}", response_model=TaskOut)
    async def update_task(task_id: str, body: TaskUpdate) -> TaskOut:
        task = tasks.get(task_id)
        if task is None:
            raise HTTPException(404, "task not found")
        changes = body.model_dump(exclude_unset=True)
        tasks[task_id] = task = task.model_copy(update={**changes, "updated_at": now()})
        return task

    @app.post("/api/tasks/claim", response_model=TaskOut)
    async def claim_task(body: ClaimIn) -> TaskOut | Response:
        while pending:
            _, _, task_id = heapq.heappop(pending)
            task = tasks[task_id]
            if task.status == "pending":
                update = {
                    "status": "in_progress",
                    "agent_id": body.agent_id,
                    "lease_id": lease(),
                    "updated_at": now(),
                }
                tasks[task_id] = task = task.model_copy(update=update)
                return task
        return Response(status_code=204)

    @app.post("/api/tasks/{task_id}/complete", response_model=TaskOut)
    async def complete_task(task_id: str, body: CompleteIn) -> TaskOut:
        task = tasks.get(task_id)
        if task is None:
            raise HTTPException(404, "task not found")
        if task.status != "in_progress" or task.lease_id != body.lease_id:
            raise HTTPException(409, "not your lease")
        update = {"status": "completed", "lease_id": None, "updated_at": now()}
        tasks[task_id] = task = task.model_copy(update=update)
        return task

    @app.post("/api/messages", status_code=201, response_model=MessageOut)
    async def send_message(body: MessageCreate) -> MessageOut:
        return MessageOut(id=f"msg_{uuid.uuid4().hex}", created_at=now(), **body.model_dump())

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    memory = args.database_url == "memory:"
    uvicorn.run(
        build_floor_app() if memory else build_app(args.database_url),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
    )


if __name__ == "__main__":
    main()
