"""Subtasks: the steps of a task, with the task lifecycle's rules."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Subtask, Task, TaskStatus
from app.db.types import utcnow
from app.domain import access, lifecycle, pagination
from app.domain.context import Context
from app.domain.errors import NotFound
from app.domain.rows import Snapshot, insert, new_id
from app.domain.tasks import writable_task
from app.schemas import Page, SubtaskCreate, SubtaskOut, SubtaskUpdate


def subtask_out(row: Subtask | Snapshot) -> SubtaskOut:
    return SubtaskOut.model_validate(row, from_attributes=True)


async def create_subtask(ctx: Context, task_id: str, body: SubtaskCreate) -> SubtaskOut:
    """Add a subtask to a task the actor may change; emits subtask.created."""
    await writable_task(ctx, task_id)
    now = utcnow()
    row = Subtask(
        id=body.id or new_id("subtask"),
        task_id=task_id,
        title=body.title,
        description=body.description,
        agent_id=body.agent_id,
        payload=body.payload,
        status=TaskStatus.PENDING.value,
        created_at=now,
        updated_at=now,
    )
    await insert(ctx.db, row, "Subtask")
    return subtask_out(row)


async def list_subtasks(
    ctx: Context,
    task_id: str,
    *,
    limit: int = 50,
    cursor: str | None = None,
    order: pagination.Order = pagination.Order.ASC,
) -> Page[SubtaskOut]:
    """A task's subtasks by creation time."""
    if await ctx.db.get(Task, task_id) is None:
        raise NotFound("Task", task_id)
    query = select(Subtask).where(Subtask.task_id == task_id)
    rows, next_cursor = await pagination.page(
        ctx.db, query, Subtask.created_at, Subtask.id, limit, cursor, order
    )
    return Page[SubtaskOut](items=[subtask_out(r) for r in rows], next_cursor=next_cursor)


async def update_subtask(ctx: Context, subtask_id: str, body: SubtaskUpdate) -> SubtaskOut:
    """Change a subtask; emits subtask.*. An agent changes a subtask assigned to it, or an
    unassigned one of a task it may change. Runs in the shared transaction with concurrent
    requests' changes (db/shared_transaction.py) unless its session holds a transaction."""
    actor = ctx.actor
    changes = lifecycle.patch_changes(body.model_dump(exclude_unset=True))

    async def change(db: AsyncSession) -> Snapshot:
        async def guard(row: Any) -> None:
            assignee = row.agent_id
            if assignee is None:  # a column read, not an entity: the batch's session is
                # shared, and an entity another call changed by UPDATE would be stale in it
                assignee = await db.scalar(select(Task.agent_id).where(Task.id == row.task_id))
            access.check_task_writer(actor, "Subtask", subtask_id, assignee)

        return await lifecycle.update_lifecycle(
            db, Subtask, "Subtask", subtask_id, changes, guard, commit=False
        )

    return subtask_out(await ctx.change(change, key=subtask_id))
