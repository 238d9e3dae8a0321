"""Subtasks: /api/tasks/{id}/subtasks (create, list) and PATCH /api/subtasks/{id}."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ContextDep, Cursor, Limit, OrderQuery, PathId
from app.api.errors import responses
from app.domain import subtasks
from app.domain.pagination import Order
from app.schemas import Page, SubtaskCreate, SubtaskOut, SubtaskUpdate

router = APIRouter(tags=["subtasks"])


@router.post(
    "/api/tasks/{task_id}/subtasks",
    status_code=201,
    response_model=SubtaskOut,
    responses=responses(400, 403, 404, 409),
)
async def create_subtask(task_id: PathId, body: SubtaskCreate, ctx: ContextDep) -> SubtaskOut:
    """Add a subtask to a task; emits subtask.created."""
    return await subtasks.create_subtask(ctx, task_id, body)


@router.get(
    "/api/tasks/{task_id}/subtasks",
    response_model=Page[SubtaskOut],
    responses=responses(404),
)
async def list_subtasks(
    task_id: PathId,
    ctx: ContextDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    order: OrderQuery = Order.ASC,
) -> Page[SubtaskOut]:
    """A task's subtasks, oldest first (`order=desc`: newest first)."""
    return await subtasks.list_subtasks(ctx, task_id, limit=limit, cursor=cursor, order=order)


@router.patch(
    "/api/subtasks/{subtask_id}",
    response_model=SubtaskOut,
    responses=responses(400, 403, 404, 409),
)
async def update_subtask(subtask_id: PathId, body: SubtaskUpdate, ctx: ContextDep) -> SubtaskOut:
    """Change a subtask, with the task lifecycle's rules; emits subtask.*."""
    return await subtasks.update_subtask(ctx, subtask_id, body)
