"""Tasks: queue one, list and read them, change their state (ownership in access.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, select

from app.db.models import Task, TaskStatus
from app.db.types import utcnow
from app.domain import access, lifecycle, pagination
from app.domain.context import Context
from app.domain.errors import NotFound
from app.domain.rows import insert, new_id
from app.schemas import Page, TaskCreate, TaskOut, TaskUpdate


def task_out(row: Task) -> TaskOut:
    return TaskOut.model_validate(row, from_attributes=True)


async def create_task(ctx: Context, body: TaskCreate) -> TaskOut:
    """Queue a task (pending) for any assignee; its trigger emits task.created."""
    access.require_writer(ctx.actor)
    now = utcnow()
    row = Task(
        id=body.id or new_id("task"),
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
    await insert(ctx.db, row, "Task")
    return task_out(row)


def task_filters(
    status: TaskStatus | None, agent_id: str | None, session_id: str | None
) -> list[ColumnElement[bool]]:
    filters: list[ColumnElement[bool]] = []
    if status is not None:
        filters.append(Task.status == status.value)
    if agent_id is not None:
        filters.append(Task.agent_id == agent_id)
    if session_id is not None:
        filters.append(Task.session_id == session_id)
    return filters


async def list_tasks(
    ctx: Context,
    *,
    status: TaskStatus | None = None,
    agent_id: str | None = None,
    session_id: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    order: pagination.Order = pagination.Order.ASC,
) -> Page[TaskOut]:
    """Tasks by creation time, filtered by any of status, assignee, session."""
    query = select(Task).where(*task_filters(status, agent_id, session_id))
    rows, next_cursor = await pagination.page(
        ctx.db, query, Task.created_at, Task.id, limit, cursor, order
    )
    return Page[TaskOut](items=[task_out(r) for r in rows], next_cursor=next_cursor)


async def get_task(ctx: Context, task_id: str) -> TaskOut:
    row = await ctx.db.get(Task, task_id)
    if row is None:
        raise NotFound("Task", task_id)
    return task_out(row)


async def writable_task(ctx: Context, task_id: str) -> Task:
    """The task, if the actor may change it (and what hangs on it: subtasks)."""
    row = await ctx.db.get(Task, task_id)
    if row is None:
        raise NotFound("Task", task_id)
    access.check_task_writer(ctx.actor, "Task", task_id, row.agent_id)
    return row


async def update_task(ctx: Context, task_id: str, body: TaskUpdate) -> TaskOut:
    """Change a task: status (validated), result, error, …; the trigger emits task.updated,
    or task.completed / task.failed when it reaches that status."""
    actor = ctx.actor

    async def guard(row: Any) -> None:
        access.check_task_writer(actor, "Task", task_id, row.agent_id)

    changes = lifecycle.patch_changes(body.model_dump(exclude_unset=True))
    row = await lifecycle.update_lifecycle(ctx.db, Task, "Task", task_id, changes, guard)
    return task_out(row)
