"""Tasks: queue one, list and read them, change their state (ownership in access.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Task, TaskDependency, TaskStatus
from app.db.types import utcnow
from app.domain import access, dependencies, lifecycle, pagination
from app.domain.context import Context
from app.domain.errors import Conflict, NotFound
from app.domain.rows import Dependency, Snapshot, insert, insert_values, new_id
from app.schemas import LeaseOut, Page, TaskCreate, TaskOut, TaskUpdate

LEASE_LOST = "LEASE_LOST"


def lease_out(row: Task | Snapshot) -> LeaseOut | None:
    if row.lease_id is None or row.lease_agent_id is None or row.lease_expires_at is None:
        return None
    return LeaseOut(
        id=row.lease_id,
        agent_id=row.lease_agent_id,
        fence=row.lease_fence,
        expires_at=row.lease_expires_at,
    )


def task_out(row: Task | Snapshot) -> TaskOut:
    return TaskOut(
        id=row.id,
        session_id=row.session_id,
        agent_id=row.agent_id,
        title=row.title,
        description=row.description,
        status=TaskStatus(row.status),
        priority=row.priority,
        payload=row.payload,
        result=row.result,
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        depends_on=[d.depends_on for d in row.dependencies],
        capabilities=list(row.capabilities or ()),
        max_attempts=row.max_attempts,
        attempts=row.attempts,
        ready_at=row.ready_at,
        lease=lease_out(row),
    )


def lease_change(row: Task, lease_id: str | None, status: str) -> dict[str, Any]:
    """A PATCH of `status` on a leased task: it needs the live lease, and ends it."""
    now = utcnow()
    live = row.lease_id is not None and row.lease_expires_at is not None
    if not live or status == row.status:
        return {}
    assert row.lease_expires_at is not None
    if lease_id != row.lease_id or row.lease_expires_at <= now:
        raise Conflict(
            f"Task {row.id} is leased: changing its status needs its lease_id", LEASE_LOST
        )
    outcome = {
        TaskStatus.COMPLETED: "completed",
        TaskStatus.FAILED: "failed",
        TaskStatus.PENDING: "released",
        TaskStatus.CANCELLED: "cancelled",
    }.get(TaskStatus(status), "released")
    return {
        "lease_id": None,
        "lease_agent_id": None,
        "lease_expires_at": None,
        "lease_outcome": outcome,
    }


async def create_task(ctx: Context, body: TaskCreate) -> TaskOut:
    """Queue a task (pending) for any assignee; its trigger emits task.created."""
    access.require_writer(ctx.actor)
    # Without dependencies there is nothing to read: no session is opened (ctx.db would open
    # one, and closing it is ≈ 5 % of a create's CPU, py-spy).
    ready_at = (
        await dependencies.check_dependencies(ctx.db, body.id, body.depends_on)
        if body.depends_on
        else utcnow()
    )
    now = utcnow()
    values: dict[str, Any] = {
        "id": body.id or new_id("task"),
        "title": body.title,
        "description": body.description,
        "session_id": body.session_id,
        "agent_id": body.agent_id,
        "priority": body.priority,
        "payload": body.payload,
        "status": TaskStatus.PENDING.value,
        "capabilities": sorted(set(body.capabilities)) or None,
        "max_attempts": body.max_attempts,
        "attempts": 0,
        "lease_fence": 0,
        "ready_at": ready_at,
        "created_at": now,
        "updated_at": now,
    }
    wanted = sorted(set(body.depends_on))
    if wanted or ctx.in_transaction():
        # It read its dependencies, so its session holds a transaction: its rows go into
        # that one. The group commit's is another, and waiting for it while holding SQLite's
        # one connection would wait for ever.
        row = Task(**values)
        row.dependencies = [TaskDependency(task_id=row.id, depends_on=d) for d in wanted]
        await insert(ctx.db, row, "Task")
        return task_out(row)
    created = await insert_values(
        ctx.writes, Task.__table__, values, "Task", chosen=body.id is not None
    )
    created.dependencies = []
    return task_out(created)


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
    ready: bool = False,
    limit: int = 50,
    cursor: str | None = None,
    order: pagination.Order = pagination.Order.ASC,
) -> Page[TaskOut]:
    """Tasks by creation time, filtered by any of status, assignee, session, claimable."""
    query = select(Task).where(*task_filters(status, agent_id, session_id))
    if ready:
        query = query.where(*dependencies.claimable(ctx.db))
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
    or task.completed / task.failed when it reaches that status.

    A change that writes the task row alone (no new dependencies) runs in the shared
    transaction with concurrent requests' (db/shared_transaction.py); one that replaces the
    dependencies, or whose session already holds a transaction, runs in its own."""
    actor = ctx.actor
    given = body.model_dump(exclude_unset=True)
    lease_id = given.pop("lease_id", None)
    depends_on = given.pop("depends_on", None)
    if "capabilities" in given:
        given["capabilities"] = sorted(set(given["capabilities"] or ())) or None
    changes = lifecycle.patch_changes(given)

    async def change(db: AsyncSession, commit: bool) -> Snapshot:
        replaced = False  # prepare wrote new dependency rows (the loaded list is stale)

        async def guard(row: Any) -> None:
            access.check_task_writer(actor, "Task", task_id, row.agent_id)

        async def prepare(row: Any, changes: dict[str, Any]) -> dict[str, Any]:
            nonlocal replaced
            changes = dict(changes)
            if "status" in changes:
                changes.update(lease_change(row, lease_id, changes["status"]))
            if depends_on is not None and sorted(set(depends_on)) != [
                d.depends_on for d in row.dependencies
            ]:
                if row.status != TaskStatus.PENDING or row.lease_id is not None:
                    raise Conflict(
                        f"Task {task_id} is {row.status}: its dependencies change only while "
                        "it is pending",
                        "ILLEGAL_TRANSITION",
                    )
                changes["ready_at"] = await dependencies.check_dependencies(db, task_id, depends_on)
                await dependencies.replace_dependencies(db, row, depends_on)
                replaced = True
                changes["updated_at"] = utcnow()  # a change even if nothing else is
            return changes

        async def settle(row: Any, values: dict[str, Any]) -> None:
            status = values.get("status")
            if status is not None and status != row.status:
                await dependencies.settle_dependents(db, task_id, status)

        row = await lifecycle.update_lifecycle(
            db, Task, "Task", task_id, changes, guard, prepare, settle, commit=commit
        )
        if replaced:  # the rows prepare wrote, as replace_dependencies wrote them
            row.dependencies = [Dependency(d) for d in sorted(set(depends_on or ()))]
        return row

    if depends_on is None:
        row = await ctx.change(lambda db: change(db, commit=False), key=task_id)
    else:
        row = await change(ctx.db, commit=True)
    return task_out(row)
