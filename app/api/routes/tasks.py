"""/api/tasks: create, list (filter by status, agent, session), read, and change state."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.api.deps import ContextDep, Cursor, Limit, OrderQuery, PathId
from app.api.errors import responses
from app.db.models import TaskStatus
from app.domain import claims, tasks
from app.domain.pagination import Order
from app.schemas import (
    Claimed,
    ClaimRequest,
    ErrorBody,
    Id,
    LeaseComplete,
    LeaseFail,
    LeaseRelease,
    LeaseRenew,
    Page,
    TaskCreate,
    TaskOut,
    TaskUpdate,
)

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
    ready: Annotated[
        bool | None,
        Query(
            description="true: only claimable tasks (pending, dependencies completed, "
            "attempts left)."
        ),
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
    order: OrderQuery = Order.ASC,
) -> Page[TaskOut]:
    """Tasks by creation time, oldest first (`order=desc`: newest first), filtered by any of
    status, agent_id, session_id, ready."""
    return await tasks.list_tasks(
        ctx,
        status=status,
        agent_id=agent_id,
        session_id=session_id,
        ready=ready is True,
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


_LEASE_ERRORS = {
    **responses(400, 403, 404),
    409: {
        "model": ErrorBody,
        "description": "LEASE_LOST: the lease expired or another claim took the task over; "
        "nothing was changed.",
    },
}


@router.post(
    "/claim",
    response_model=Claimed,
    responses={
        **responses(400, 403),
        204: {"description": "No task is ready (after waiting `wait_seconds`)."},
    },
)
async def claim_task(body: ClaimRequest, ctx: ContextDep) -> Claimed | Response:
    """Claim the highest-priority, oldest ready task: it goes to in_progress under a lease
    (task.claimed). With `wait_seconds`, waits for one to become ready; 204 when none did."""
    claimed = await claims.claim(ctx, body)
    if claimed is None:
        return Response(status_code=204)
    return claimed


@router.post("/{task_id}/lease", response_model=TaskOut, responses=_LEASE_ERRORS)
async def renew_lease(task_id: PathId, body: LeaseRenew, ctx: ContextDep) -> TaskOut:
    """Renew a lease (a heartbeat of the holder renews all of its leases too)."""
    return await claims.renew(ctx, task_id, body.lease_id, body.lease_seconds)


@router.post("/{task_id}/complete", response_model=TaskOut, responses=_LEASE_ERRORS)
async def complete_task(task_id: PathId, body: LeaseComplete, ctx: ContextDep) -> TaskOut:
    """Complete a leased task (task.completed); its dependents become ready (task.ready)."""
    return await claims.complete(ctx, task_id, body.lease_id, body.result)


@router.post("/{task_id}/fail", response_model=TaskOut, responses=_LEASE_ERRORS)
async def fail_task(task_id: PathId, body: LeaseFail, ctx: ContextDep) -> TaskOut:
    """Fail this attempt: back to pending while attempts are left and `retry`, else failed
    (its dependents are then cancelled)."""
    return await claims.fail(ctx, task_id, body.lease_id, body.error, body.retry)


@router.post("/{task_id}/release", response_model=TaskOut, responses=_LEASE_ERRORS)
async def release_task(task_id: PathId, body: LeaseRelease, ctx: ContextDep) -> TaskOut:
    """Give a leased task back, untouched (task.released); the attempt does not count."""
    return await claims.release(ctx, task_id, body.lease_id)
