"""The lifecycle tasks and subtasks share: allowed status changes, their timestamps, PATCH.

Status changes are compare-and-set updates (``… WHERE id = :id AND status = :seen``), so two
concurrent changes cannot both move a row out of the same state, on either database, without
holding a transaction open.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any

from sqlalchemy import Select, Update, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import FINISHED, TaskDependency, TaskStatus
from app.db.shared_transaction import Retry
from app.db.types import utcnow
from app.domain.errors import Conflict, IllegalTransition, NotFound
from app.domain.rows import Dependency, Snapshot

# Allowed status changes of a task or subtask. Staying in the same state is not a change.
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset(
        {TaskStatus.IN_PROGRESS, TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED}
    ),
    TaskStatus.IN_PROGRESS: frozenset(
        {TaskStatus.PENDING, TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED}
    ),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}

# Columns that cannot be NULL: `null` in a PATCH means "leave as is" for them.
NOT_NULLABLE = frozenset({"status", "title", "priority", "max_attempts"})

# Who may change a row, given it as it is now (raises Forbidden): ownership, from access.py.
Guard = Callable[[Any], Awaitable[None]]
# What a resource adds to a change, given the row as it is now and the change asked: the
# column values to write (it may also write other tables, in the same transaction).
Prepare = Callable[[Any, dict[str, Any]], Awaitable[dict[str, Any]]]
# What follows a change in the same transaction (e.g. a task's dependents), given the row as
# it was and the values written.
Settle = Callable[[Any, dict[str, Any]], Awaitable[None]]


def patch_changes(given: dict[str, Any]) -> dict[str, Any]:
    """A PATCH body (fields the client set) as column values."""
    changes = {k: v for k, v in given.items() if not (v is None and k in NOT_NULLABLE)}
    if changes.get("status") is not None:
        changes["status"] = TaskStatus(changes["status"]).value
    return changes


def check_transition(kind: str, ident: str, current: str, wanted: str | None) -> None:
    """IllegalTransition unless `current` → `wanted` is allowed (or no change)."""
    if wanted is None or wanted == current:
        return
    if TaskStatus(wanted) not in TRANSITIONS[TaskStatus(current)]:
        hint = " (finished: it does not change any more)" if current in FINISHED else ""
        raise IllegalTransition(f"{kind} {ident} cannot go from {current} to {wanted}{hint}")


def lifecycle_values(current: str, changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` plus the timestamps a status change implies."""
    values = dict(changes)
    now = utcnow()
    wanted = values.get("status")
    if wanted is not None and wanted != current:
        if wanted == TaskStatus.IN_PROGRESS:
            values["started_at"] = now
        elif wanted in FINISHED:
            values["completed_at"] = now
    values["updated_at"] = now
    return values


_DEPENDS_ON = "_depends_on"


@cache
def _read(model: Any) -> Select[Any]:
    """The row by id, and a task's dependencies in the same SELECT (an outer join: one row
    per dependency, or one with NULL), built once per model."""
    table = model.__table__
    if getattr(model, "dependencies", None) is None:
        return select(table).where(table.c.id == bindparam("ident"))
    dependencies = TaskDependency.__table__
    return (
        select(table, dependencies.c.depends_on.label(_DEPENDS_ON))
        .outerjoin(dependencies, dependencies.c.task_id == table.c.id)
        .where(table.c.id == bindparam("ident"))
        .order_by(dependencies.c.depends_on)
    )


async def read_snapshot(db: AsyncSession, model: Any, ident: str) -> Snapshot | None:
    rows = (await db.execute(_read(model), {"ident": ident})).mappings().all()
    if not rows:
        return None
    first = rows[0]
    if _DEPENDS_ON not in first:
        return Snapshot(**first)
    snapshot = Snapshot(**{key: value for key, value in first.items() if key != _DEPENDS_ON})
    snapshot.dependencies = [
        Dependency(row[_DEPENDS_ON]) for row in rows if row[_DEPENDS_ON] is not None
    ]
    return snapshot


@cache
def _compare_and_set(model: Any, keys: tuple[str, ...]) -> Update:
    """UPDATE … SET `keys` WHERE id = :cas_id AND status = :cas_status, built once per set of
    keys: building the statement cost more than running it (py-spy: ≈ 12 % of a PATCH)."""
    table = model.__table__
    return (
        update(table)
        .where(table.c.id == bindparam("cas_id"), table.c.status == bindparam("cas_status"))
        .values({key: bindparam(f"set_{key}", type_=table.c[key].type) for key in keys})
    )


async def update_lifecycle(
    db: AsyncSession,
    model: type[Any],
    kind: str,
    ident: str,
    changes: dict[str, Any],
    guard: Guard | None = None,
    prepare: Prepare | None = None,
    settle: Settle | None = None,
    commit: bool = True,
) -> Snapshot:
    """Apply a PATCH to a task or subtask: guarded, validated, compare-and-set, retried.

    A retry (someone changed the status meanwhile) rolls back and runs everything again,
    `prepare`'s writes included. The answer is the row as read plus what was written.
    `commit=False`: the caller commits, and runs this again when it raises `Retry`
    (`Context.change`, db/shared_transaction.py).
    """
    mapped: Any = model  # the key of the statement caches
    for _ in range(5 if commit else 1):
        row = await read_snapshot(db, mapped, ident)
        if row is None:
            raise NotFound(kind, ident)
        if guard is not None:
            await guard(row)
        current = row.status
        check_transition(kind, ident, current, changes.get("status"))
        asked = changes if prepare is None else await prepare(row, changes)
        effective = {k: v for k, v in asked.items() if getattr(row, k) != v}
        if not effective:
            return row  # nothing changes: no write, no event
        if current in FINISHED:
            raise Conflict(f"{kind} {ident} is {current}: it does not change any more", "FINISHED")
        values = lifecycle_values(current, effective)
        if "started_at" in values and row.started_at is not None:
            values.pop("started_at")  # keep the first start
        keys = tuple(sorted(values))
        params = {f"set_{key}": values[key] for key in keys}
        result: Any = await db.execute(
            _compare_and_set(mapped, keys), {"cas_id": ident, "cas_status": current, **params}
        )
        if result.rowcount == 1:
            if settle is not None:
                await settle(row, values)
            if commit:
                await db.commit()
            # The row is now what was read plus `values`: no trigger writes the row itself and
            # `settle` writes its dependents only, so it is not read a second time.
            for key, value in values.items():
                setattr(row, key, value)
            return row
        # Someone changed the status meanwhile: look again.
        if not commit:
            raise Retry(_too_fast(kind, ident))
        await db.rollback()
    raise _too_fast(kind, ident)


def _too_fast(kind: str, ident: str) -> Conflict:
    return Conflict(f"{kind} {ident} is changing too fast; retry")
