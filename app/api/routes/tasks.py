"""/api/tasks: create, list (filter by status, agent, session), read, and change state."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import ContextDep, Cursor, Limit, OrderQuery, PathId
from app.api.errors import responses
from app.db.models import TaskStatus
from app.domain import tasks
from app.domain.pagination import Order
from app.schemas import Id, Page, TaskCreate, TaskOut, TaskUpdate

router = APIRouter(prefix="/api/tasks", tags=["tasks"])


@router.post("", status_code=201, response_model=TaskOut, responses=responses(400, 403, 409))
async def create_task(body: TaskCreate, ctx: ContextDep) -> TaskOut:
    """Queue a task (status pending); emits task.created."""
    return await tasks.create_task(ctx, body)


@router.get("", response_model=Page[TaskOut])
async def list_tasks(
    ctx: ContextDep,
    status: Annotated[TaskStatus | None, Query()] = None,
    agent_id: Annotated[Id | None, Query()] = None,
    session_id: Annotated[Id | None, Query()] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
    order: OrderQuery = Order.ASC,
) -> Page[TaskOut]:
    """Tasks by creation time, oldest first (`order=desc`: newest first), filtered by any of
    status, agent_id, session_id."""
    return await tasks.list_tasks(
        ctx,
        status=status,
        agent_id=agent_id,
        session_id=session_id,
        limit=limit,
        cursor=cursor,
        order=order,
    )


@router.get("/{task_id}", response_model=TaskOut, responses=responses(404))
async def get_task(task_id: PathId, ctx: ContextDep) -> TaskOut:
    """One task."""
    return await tasks.get_task(ctx, task_id)


@router.patch("/{task_id}", response_model=TaskOut, responses=responses(400, 403, 404, 409))
async def update_task(task_id: PathId, body: TaskUpdate, ctx: ContextDep) -> TaskOut:
    """Change a task: its status (validated), result, error, … Emits task.updated, or
    task.completed / task.failed when it reaches that status. An agent changes only tasks
    assigned to it or to nobody."""
    return await tasks.update_task(ctx, task_id, body)
