"""/api/tasks: create, list (filter by status, agent, session), read, and change state."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from app import crud
from app.api.deps import BridgeDep, Cursor, DbDep, Limit, OrderQuery, PathId
from app.api.errors import not_found, responses
from app.db.models import Task, TaskStatus
from app.db.types import utcnow
from app.schemas import Id, Page, TaskCreate, TaskOut, TaskUpdate

router = APIRouter(prefix="/api/tasks", tags=["tasks"])


def task_out(row: Task) -> TaskOut:
    return TaskOut.model_validate(row, from_attributes=True)


@router.post("", status_code=201, response_model=TaskOut, responses=responses(400, 409))
async def create_task(body: TaskCreate, db: DbDep, bridge: BridgeDep) -> TaskOut:
    """Queue a task (status pending); emits task.created."""
    now = utcnow()
    row = Task(
        id=body.id or crud.new_id("task"),
        title=body.title,
        description=body.description,
        session_id=body.session_id,
        agent_id=body.agent_id,
        priority=body.priority,
        payload=body.payload,
        status=TaskStatus.PENDING.value,
        created_at=now,
        updated_at=now,
    )
    await crud.insert(db, row, "Task", bridge.wake)
    return task_out(row)


@router.get("", response_model=Page[TaskOut])
async def list_tasks(
    db: DbDep,
    status: Annotated[TaskStatus | None, Query()] = None,
    agent_id: Annotated[Id | None, Query()] = None,
    session_id: Annotated[Id | None, Query()] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
    order: OrderQuery = crud.Order.ASC,
) -> Page[TaskOut]:
    """Tasks by creation time, oldest first (`order=desc`: newest first), filtered by any of
    status, agent_id, session_id."""
    query = select(Task).where(
        *crud.task_filters(status.value if status else None, agent_id, session_id)
    )
    rows, next_cursor = await crud.page(db, query, Task.created_at, Task.id, limit, cursor, order)
    return Page[TaskOut](items=[task_out(r) for r in rows], next_cursor=next_cursor)


@router.get("/{task_id}", response_model=TaskOut, responses=responses(404))
async def get_task(task_id: PathId, db: DbDep) -> TaskOut:
    """One task."""
    row = await db.get(Task, task_id)
    if row is None:
        raise not_found("Task", task_id)
    return task_out(row)


@router.patch("/{task_id}", response_model=TaskOut, responses=responses(400, 404, 409))
async def update_task(task_id: PathId, body: TaskUpdate, db: DbDep, bridge: BridgeDep) -> TaskOut:
    """Change a task: its status (validated), result, error, … Emits task.updated, or
    task.completed / task.failed when it reaches that status."""
    changes = body.model_dump(exclude_unset=True)
    if changes.get("status") is not None:
        changes["status"] = TaskStatus(changes["status"]).value
    for key in ("status", "title", "priority"):
        if key in changes and changes[key] is None:
            del changes[key]  # not nullable: null means "leave as is"
    row = await crud.update_lifecycle(db, Task, "Task", task_id, changes, bridge.wake)
    return task_out(row)
