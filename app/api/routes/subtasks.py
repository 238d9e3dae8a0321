"""Subtasks: /api/tasks/{id}/subtasks (create, list) and PATCH /api/subtasks/{id}."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from app import crud
from app.api.deps import BridgeDep, Cursor, DbDep, Limit, OrderQuery, PathId
from app.api.errors import not_found, responses
from app.db.models import Subtask, Task, TaskStatus
from app.db.types import utcnow
from app.schemas import Page, SubtaskCreate, SubtaskOut, SubtaskUpdate

router = APIRouter(tags=["subtasks"])


def subtask_out(row: Subtask) -> SubtaskOut:
    return SubtaskOut.model_validate(row, from_attributes=True)


@router.post(
    "/api/tasks/{task_id}/subtasks",
    status_code=201,
    response_model=SubtaskOut,
    responses=responses(400, 404, 409),
)
async def create_subtask(
    task_id: PathId, body: SubtaskCreate, db: DbDep, bridge: BridgeDep
) -> SubtaskOut:
    """Add a subtask to a task; emits subtask.created."""
    if await db.get(Task, task_id) is None:
        raise not_found("Task", task_id)
    now = utcnow()
    row = Subtask(
        id=body.id or crud.new_id("subtask"),
        task_id=task_id,
        title=body.title,
        description=body.description,
        agent_id=body.agent_id,
        payload=body.payload,
        status=TaskStatus.PENDING.value,
        created_at=now,
        updated_at=now,
    )
    await crud.insert(db, row, "Subtask", bridge.wake)
    return subtask_out(row)


@router.get(
    "/api/tasks/{task_id}/subtasks",
    response_model=Page[SubtaskOut],
    responses=responses(404),
)
async def list_subtasks(
    task_id: PathId,
    db: DbDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    order: OrderQuery = crud.Order.ASC,
) -> Page[SubtaskOut]:
    """A task's subtasks, oldest first (`order=desc`: newest first)."""
    if await db.get(Task, task_id) is None:
        raise not_found("Task", task_id)
    query = select(Subtask).where(Subtask.task_id == task_id)
    rows, next_cursor = await crud.page(
        db, query, Subtask.created_at, Subtask.id, limit, cursor, order
    )
    return Page[SubtaskOut](items=[subtask_out(r) for r in rows], next_cursor=next_cursor)


@router.patch(
    "/api/subtasks/{subtask_id}", response_model=SubtaskOut, responses=responses(400, 404, 409)
)
async def update_subtask(
    subtask_id: PathId, body: SubtaskUpdate, db: DbDep, bridge: BridgeDep
) -> SubtaskOut:
    """Change a subtask, with the task lifecycle's rules; emits subtask.*."""
    changes = body.model_dump(exclude_unset=True)
    if changes.get("status") is not None:
        changes["status"] = TaskStatus(changes["status"]).value
    for key in ("status", "title"):
        if key in changes and changes[key] is None:
            del changes[key]
    row = await crud.update_lifecycle(db, Subtask, "Subtask", subtask_id, changes, bridge.wake)
    return subtask_out(row)
