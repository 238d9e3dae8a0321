"""Claiming tasks with a lease: one agent at a time, and a crashed agent's task comes back.

    claim ──▶ in_progress, attempts + 1, a new lease (id, holder, fence + 1, expires_at)
      │        renew (POST …/lease, or any heartbeat of the holder) pushes expires_at on
      ├── complete ─▶ completed (dependents become ready)
      ├── fail ─────▶ pending again while attempts are left (retry), else failed
      ├── release ──▶ pending, the attempt given back
      └── expiry ───▶ pending, or failed once max_attempts claims were used (the sweeper)

A claim is one UPDATE whose WHERE picks the best ready task (pending, every dependency
completed, capabilities covered, attempts left; highest priority, then oldest): on
PostgreSQL the pick is `FOR UPDATE SKIP LOCKED`, so concurrent claimers take different rows
without queueing behind each other; on SQLite the statement holds the database's write lock
(and a process has one connection: db/engine.py).
Every lease operation is a compare-and-set on (lease id, not expired): a lease that expired or
was taken over answers 409 LEASE_LOST and changes nothing. The fence grows with every claim,
so whatever a holder writes elsewhere can carry it and be told apart from an older holder's.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import Update, and_, bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.security import Role
from app.db.models import Agent, Task, TaskDependency, TaskStatus
from app.db.types import utcnow
from app.domain import access
from app.domain.context import Context
from app.domain.dependencies import claim_conditions, settle_dependents
from app.domain.errors import Conflict, Forbidden, NotFound
from app.domain.lifecycle import read_snapshot
from app.domain.rows import Dependency, Snapshot
from app.domain.tasks import LEASE_LOST, lease_out, task_out
from app.realtime.permissions import Principal
from app.schemas import Claimed, ClaimRequest, TaskOut


def new_lease_id() -> str:
    return f"lease_{uuid.uuid4().hex}"


# --- claiming --------------------------------------------------------------------------------

# What an agent declared it can do when it registered (None: no such agent).
_DECLARED = select(Agent.capabilities).where(Agent.id == bindparam("agent"))

# The best ready task first: highest priority, then the oldest. ix_tasks_claim is in this order.
CLAIM_ORDER = (Task.priority.desc(), Task.created_at, Task.id)


@cache
def _claim_statement(postgres: bool, capabilities: bool, session: bool) -> Update:
    """The claim, one statement, built once per shape (building it cost a quarter of a
    claim's CPU): its values are named parameters, those of `claim_conditions` and c_lease,
    c_now, c_expires, c_seconds.

    PostgreSQL: the pick skips rows other claimers hold, so nobody queues. SQLite: one
    writer, and one pooled connection per process (db/engine.py), so the statement runs
    alone; it re-checks readiness under the write lock it holds. It returns the claimed row's
    columns (its dependencies are read in the same transaction), so nothing is read back
    after the commit."""
    ready = claim_conditions(postgres, capabilities, session)
    pick = (
        select(Task.id)
        .where(*ready)
        .order_by(*CLAIM_ORDER)
        .limit(1)
        .with_for_update(skip_locked=True, of=Task)
        .scalar_subquery()
    )
    table: Any = Task.__table__
    columns = table.c
    now = bindparam("c_now", type_=columns.updated_at.type)
    return (
        update(table)
        .where(Task.id == pick, *ready)
        .values(
            status=TaskStatus.IN_PROGRESS.value,
            attempts=Task.attempts + 1,
            lease_id=bindparam("c_lease", type_=columns.lease_id.type),
            lease_agent_id=bindparam("c_agent", type_=columns.lease_agent_id.type),
            lease_fence=Task.lease_fence + 1,
            lease_expires_at=bindparam("c_expires", type_=columns.lease_expires_at.type),
            lease_seconds=bindparam("c_seconds", type_=columns.lease_seconds.type),
            lease_outcome=None,
            started_at=func.coalesce(Task.started_at, now),
            updated_at=now,
        )
        .returning(*columns)
    )


async def try_claim(ctx: Context, agent_id: str, body: ClaimRequest) -> Claimed | None:
    """Claim the best ready task now, or None: in the shared transaction with concurrent
    requests' claims and PATCHes (db/shared_transaction.py), unless this call's session
    holds a transaction already."""
    return await ctx.change(lambda db: _claim_in(db, agent_id, body))


async def _claim_in(db: AsyncSession, agent_id: str, body: ClaimRequest) -> Claimed | None:
    """The claim in `db`'s transaction (the caller commits): the agent's declared
    capabilities when the request names none, the one UPDATE … RETURNING, the claimed task's
    dependencies. Reading the capabilities in the claim's transaction matters on SQLite:
    giving its one connection back between the two let other requests take it first, again
    and again — the pool's queue lets a newcomer in ahead of a waiter it has woken
    (16 claimers: p99 886 → 69 ms)."""
    if "capabilities" not in body.model_fields_set:
        declared = await db.scalar(_DECLARED, {"agent": agent_id})
        if declared:
            body = body.model_copy(update={"capabilities": list(declared)})
    postgres = db.get_bind().dialect.name == "postgresql"
    capabilities = body.capabilities
    statement = _claim_statement(postgres, capabilities is not None, body.session_id is not None)
    now = utcnow()
    lease_id = new_lease_id()
    params: dict[str, Any] = {
        "c_agent": agent_id,
        "c_lease": lease_id,
        "c_now": now,
        "c_expires": now + timedelta(seconds=body.lease_seconds),
        "c_seconds": body.lease_seconds,
    }
    if capabilities is not None:
        params["c_capabilities"] = sorted(set(capabilities))
    if body.session_id is not None:
        params["c_session"] = body.session_id
    if postgres:
        await db.execute(_IN_INDEX_ORDER)
    result = await db.execute(statement, params)
    claimed = result.mappings().one_or_none()
    if postgres:
        await db.execute(_SORT_AS_CONFIGURED)
    if claimed is None:
        return None
    row = Snapshot(**claimed)
    row.dependencies = [
        Dependency(ident) for ident in await db.scalars(_DEPENDS_ON, {"task": row.id})
    ]
    assert row.lease_id == lease_id
    lease = lease_out(row)
    assert lease is not None
    return Claimed(task=task_out(row), lease=lease)


# PostgreSQL: pick in ix_tasks_claim's order, never by sorting every pending task. With stale
# statistics (a queue that grew from empty faster than autovacuum's minute: the planner
# believes one pending row) it chose a bitmap scan and a sort of all of them, 10 ms of server
# CPU per claim at 5,000 pending (EXPLAIN ANALYZE); the index walk reads one row.
_IN_INDEX_ORDER = text("SET LOCAL enable_sort = off")
# ... for the claim alone. Left off for the rest of the transaction (a shared batch's later
# calls), a sort the plan cannot avoid (read_snapshot's ORDER BY of a task's dependencies)
# costs 10^10, past jit_above_cost: PostgreSQL JIT-compiled that one-row SELECT, 70-200 ms
# a time (auto_explain), and a batch of completions behind a claim took seconds.
_SORT_AS_CONFIGURED = text("SET LOCAL enable_sort TO DEFAULT")

_DEPENDS_ON = (
    select(TaskDependency.depends_on)
    .where(TaskDependency.task_id == bindparam("task"))
    .order_by(TaskDependency.depends_on)
)


def _may_free_a_task(event: str) -> bool:
    # Every task event goes to `global`; one of these may have made a task claimable.
    return event.startswith("task.")


async def claim(ctx: Context, body: ClaimRequest) -> Claimed | None:
    """Claim the best ready task for the actor; with `wait_seconds`, wait for one to become
    ready (woken by the task events the bridge publishes, on any node)."""
    agent_id = access.acting_agent(ctx.actor, body.agent_id, "agent_id")
    ctx.presence.touch(agent_id, create=True)
    if body.wait_seconds <= 0:
        return await try_claim(ctx, agent_id, body)
    async with ctx.realtime.watch("global", _may_free_a_task, body.wait_seconds) as watch:
        while True:
            claimed = await try_claim(ctx, agent_id, body)
            if claimed is not None or watch.expired:
                return claimed
            await watch.wait()


# --- lease operations ------------------------------------------------------------------------


async def _on_lease(
    ctx: Context, task_id: str, change: Callable[[AsyncSession], Awaitable[Snapshot]]
) -> TaskOut:
    """Run a lease operation in the shared transaction with concurrent requests' (or in this
    call's own, if its session holds one) and answer the row it left."""
    access.require_writer(ctx.actor)
    return task_out(await ctx.change(change, key=task_id))


async def _leased(db: AsyncSession, actor: Principal, task_id: str, lease_id: str) -> Snapshot:
    """The task, if `lease_id` is its live lease and the actor its holder (or an admin)."""
    row = await read_snapshot(db, Task, task_id)
    if row is None:
        raise NotFound("Task", task_id)
    if actor.role is not Role.ADMIN and row.lease_agent_id not in (None, actor.agent_id):
        raise Forbidden(f"Task {task_id} is leased to {row.lease_agent_id}, not to this agent")
    if row.lease_id != lease_id or row.lease_expires_at is None or row.lease_expires_at <= utcnow():
        raise Conflict(f"Lease {lease_id} on task {task_id} expired or was taken over", LEASE_LOST)
    return row


@cache
def _on_live_lease(keys: tuple[str, ...]) -> Update:
    """UPDATE tasks SET `keys` WHERE id, lease_id and an unexpired lease match, built once per
    set of keys (as lifecycle's compare-and-set: building it cost more than running it)."""
    table: Any = Task.__table__
    columns = table.c
    return (
        update(table)
        .where(
            columns.id == bindparam("l_id"),
            columns.lease_id == bindparam("l_lease"),
            columns.lease_expires_at > bindparam("l_now", type_=columns.lease_expires_at.type),
        )
        .values({key: bindparam(f"set_{key}", type_=columns[key].type) for key in keys})
    )


async def _set_on_lease(
    db: AsyncSession, row: Snapshot, lease_id: str, values: dict[str, Any]
) -> Snapshot:
    """Compare-and-set `values` on the live lease; the answer is the row as read plus them
    (no trigger writes the task row itself, so it is not read a second time)."""
    params = {f"set_{key}": value for key, value in values.items()}
    params.update(l_id=row.id, l_lease=lease_id, l_now=utcnow())
    result: Any = await db.execute(_on_live_lease(tuple(values)), params)
    if result.rowcount != 1:
        raise Conflict(f"Lease {lease_id} on task {row.id} expired or was taken over", LEASE_LOST)
    for key, value in values.items():
        setattr(row, key, value)
    return row


async def _end_lease(
    ctx: Context,
    task_id: str,
    lease_id: str,
    values_for: Callable[[Snapshot], dict[str, Any]],
) -> TaskOut:
    """End the live lease with the values `values_for` gives for the task as read, then
    settle its dependents, in one transaction."""
    actor = ctx.actor

    async def change(db: AsyncSession) -> Snapshot:
        row = await _leased(db, actor, task_id, lease_id)
        now = utcnow()
        values = {
            **values_for(row),
            "lease_id": None,
            "lease_agent_id": None,
            "lease_expires_at": None,
            "updated_at": now,
        }
        if values.get("status") in (TaskStatus.COMPLETED, TaskStatus.FAILED):
            values["completed_at"] = now
        row = await _set_on_lease(db, row, lease_id, values)
        await settle_dependents(db, task_id, values["status"])
        return row

    return await _on_lease(ctx, task_id, change)


async def renew(ctx: Context, task_id: str, lease_id: str, seconds: int | None) -> TaskOut:
    """Push the lease's expiry to now + `seconds` (default: the claim's). No event."""
    actor = ctx.actor

    async def change(db: AsyncSession) -> Snapshot:
        row = await _leased(db, actor, task_id, lease_id)
        length = seconds or row.lease_seconds or 300
        values = {
            "lease_expires_at": utcnow() + timedelta(seconds=length),
            "lease_seconds": length,
        }
        return await _set_on_lease(db, row, lease_id, values)

    return await _on_lease(ctx, task_id, change)


async def complete(ctx: Context, task_id: str, lease_id: str, result: Any) -> TaskOut:
    values = {"status": TaskStatus.COMPLETED.value, "result": result, "lease_outcome": "completed"}
    return await _end_lease(ctx, task_id, lease_id, lambda _row: values)


async def fail(ctx: Context, task_id: str, lease_id: str, error: str, retry: bool) -> TaskOut:
    """Failed this attempt: back to pending while attempts are left and `retry`, else failed."""

    def values_for(row: Snapshot) -> dict[str, Any]:
        again = retry and row.attempts < row.max_attempts
        status = TaskStatus.PENDING if again else TaskStatus.FAILED
        return {"status": status.value, "error": error, "lease_outcome": "failed"}

    return await _end_lease(ctx, task_id, lease_id, values_for)


async def release(ctx: Context, task_id: str, lease_id: str) -> TaskOut:
    """Give the task back untouched: pending, and the attempt does not count."""

    def values_for(row: Snapshot) -> dict[str, Any]:
        return {
            "status": TaskStatus.PENDING.value,
            "attempts": max(0, row.attempts - 1),
            "lease_outcome": "released",
        }

    return await _end_lease(ctx, task_id, lease_id, values_for)


async def renew_all(db: AsyncSession, agent_id: str) -> int:
    """A heartbeat of `agent_id`: every live lease it holds runs for its length again."""
    now = utcnow()
    rows = (
        await db.execute(
            select(Task.id, Task.lease_id, Task.lease_seconds).where(
                Task.lease_agent_id == agent_id,
                Task.lease_id.is_not(None),
                Task.lease_expires_at > now,
            )
        )
    ).all()
    for row in rows:
        await db.execute(
            update(Task)
            .where(Task.id == row.id, Task.lease_id == row.lease_id, Task.lease_expires_at > now)
            .values(lease_expires_at=now + timedelta(seconds=row.lease_seconds or 300))
            .execution_options(synchronize_session=False)
        )
    if rows:
        await db.commit()
    return len(rows)


async def leases_of(ctx: Context, agent_id: str, limit: int = 100) -> list[Claimed]:
    """The live leases `agent_id` holds, soonest to expire first: what a restarted agent
    resumes (MCP's register_agent)."""
    rows = (
        await ctx.db.scalars(
            select(Task)
            .where(
                Task.lease_agent_id == agent_id,
                Task.lease_id.is_not(None),
                Task.lease_expires_at > utcnow(),
            )
            .order_by(Task.lease_expires_at, Task.id)
            .limit(limit)
        )
    ).all()
    held = []
    for row in rows:
        lease = lease_out(row)
        if lease is not None:
            held.append(Claimed(task=task_out(row), lease=lease))
    return held


async def expiring_leases(ctx: Context, agent_id: str, within: float) -> int:
    """How many of `agent_id`'s live leases expire in the next `within` seconds."""
    now = utcnow()
    count = await ctx.db.scalar(
        select(func.count())
        .select_from(Task)
        .where(
            Task.lease_agent_id == agent_id,
            Task.lease_id.is_not(None),
            Task.lease_expires_at > now,
            Task.lease_expires_at <= now + timedelta(seconds=within),
        )
    )
    return int(count or 0)


# --- expiry (the lease sweeper, one node at a time) ------------------------------------------


async def expire_leases(db: AsyncSession, now: datetime | None = None, batch: int = 500) -> int:
    """Leases past their expiry: the task goes back to pending, or fails on its last attempt."""
    now = now or utcnow()
    rows = (
        await db.execute(
            select(Task.id, Task.lease_id, Task.attempts, Task.max_attempts)
            .where(Task.lease_id.is_not(None), Task.lease_expires_at <= now)
            .order_by(Task.lease_expires_at)
            .limit(batch)
        )
    ).all()
    expired = 0
    for row in rows:
        last = row.attempts >= row.max_attempts
        values: dict[str, Any] = {
            "status": (TaskStatus.FAILED if last else TaskStatus.PENDING).value,
            "lease_id": None,
            "lease_agent_id": None,
            "lease_expires_at": None,
            "lease_outcome": "expired",
            "updated_at": now,
        }
        if last:
            values["error"] = f"lease expired on the last of {row.max_attempts} attempts"
            values["completed_at"] = now
        result: Any = await db.execute(
            update(Task)
            .where(
                and_(
                    Task.id == row.id,
                    Task.lease_id == row.lease_id,
                    Task.lease_expires_at <= now,
                )
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            expired += 1
            await settle_dependents(db, row.id, values["status"])
    await db.commit()
    return expired
