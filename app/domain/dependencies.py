"""Task dependencies: a task is claimable once every task it depends on has completed.

- Set at creation, or replaced by PATCH while the task is pending; an unknown id, a finished
  dependency that did not complete, or a cycle is refused (422).
- `ready_at` records when the last dependency completed (the trigger then writes
  `task.ready`); it is NULL while one is unfinished. The claim query does not trust it: it
  checks the dependencies themselves (`claimable`), so a raw SQL writer cannot make a task
  claimable early.
- When a task fails or is cancelled for good, every pending task that depends on it, directly
  or not, is cancelled with the reason — in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Update,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.db.models import Task, TaskDependency, TaskStatus
from app.db.types import utcnow
from app.domain.errors import Invalid

_LOC = ("body", "depends_on")
# Longest chain walked when looking for a cycle: beyond it the graph is refused as too deep.
MAX_DEPTH = 1000


async def check_dependencies(
    db: AsyncSession, task_id: str | None, depends_on: Iterable[str]
) -> datetime | None:
    """Validate a task's new dependencies; its `ready_at` if they hold (None: not yet ready)."""
    wanted = sorted(set(depends_on))
    if not wanted:
        return utcnow()
    if task_id is not None and task_id in wanted:
        raise Invalid(f"Task {task_id} cannot depend on itself", "DEPENDENCY_CYCLE", _LOC)
    rows = (await db.execute(select(Task.id, Task.status).where(Task.id.in_(wanted)))).all()
    status = {row.id: row.status for row in rows}
    unknown = [ident for ident in wanted if ident not in status]
    if unknown:
        raise Invalid(f"Unknown task(s) {', '.join(unknown)}", "UNKNOWN_DEPENDENCY", _LOC)
    dead = [i for i in wanted if status[i] in (TaskStatus.FAILED, TaskStatus.CANCELLED)]
    if dead:
        raise Invalid(
            f"Task(s) {', '.join(dead)} {status[dead[0]]}: a dependent could never run",
            "DEPENDENCY_FAILED",
            _LOC,
        )
    if task_id is not None and await _reaches(db, wanted, task_id):
        raise Invalid(f"Depending on {', '.join(wanted)} makes a cycle", "DEPENDENCY_CYCLE", _LOC)
    done = all(status[i] == TaskStatus.COMPLETED for i in wanted)
    return utcnow() if done else None


async def _reaches(db: AsyncSession, start: list[str], target: str) -> bool:
    """Whether `target` is among the dependencies (transitively) of the tasks in `start`."""
    seen = set(start)
    frontier = list(start)
    for _ in range(MAX_DEPTH):
        if not frontier:
            return False
        rows = await db.scalars(
            select(TaskDependency.depends_on).where(TaskDependency.task_id.in_(frontier))
        )
        frontier = []
        for ident in rows:
            if ident == target:
                return True
            if ident not in seen:
                seen.add(ident)
                frontier.append(ident)
    raise Invalid(f"Dependencies deeper than {MAX_DEPTH} tasks", "DEPENDENCY_CYCLE", _LOC)


async def replace_dependencies(db: AsyncSession, task: Task, depends_on: list[str]) -> None:
    """Write a task's dependency rows (in the caller's transaction)."""
    await db.execute(delete(TaskDependency).where(TaskDependency.task_id == task.id))
    for ident in sorted(set(depends_on)):
        db.add(TaskDependency(task_id=task.id, depends_on=ident))
    await db.flush()


async def settle_dependents(db: AsyncSession, task_id: str, status: str) -> None:
    """After `task_id` reached `status`: ready its dependents, or cancel them with the reason."""
    if status == TaskStatus.COMPLETED:
        await _ready_dependents(db, task_id)
    elif status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        await _cancel_dependents(db, task_id, status)


@cache
def _ready() -> Update:
    """Ready the pending dependents of :r_task whose every dependency has completed: built
    once, where building it per completion (an aliased entity adapted anew each time) was
    ≈ 27 % of a claim → complete loop's CPU (py-spy)."""
    tasks: Any = Task.__table__
    links: Any = TaskDependency.__table__
    dep = tasks.alias("dep")
    unfinished = (
        select(links.c.task_id)
        .join(dep, dep.c.id == links.c.depends_on)
        .where(links.c.task_id == tasks.c.id, dep.c.status != TaskStatus.COMPLETED.value)
        .exists()
    )
    dependents = select(links.c.task_id).where(links.c.depends_on == bindparam("r_task"))
    now = bindparam("r_now", type_=tasks.c.ready_at.type)
    return (
        update(tasks)
        .where(
            tasks.c.id.in_(dependents),
            tasks.c.status == TaskStatus.PENDING.value,
            tasks.c.ready_at.is_(None),
            ~unfinished,
        )
        .values(ready_at=now, updated_at=now)
    )


async def _ready_dependents(db: AsyncSession, task_id: str) -> None:
    await db.execute(_ready(), {"r_task": task_id, "r_now": utcnow()})


async def _cancel_dependents(db: AsyncSession, task_id: str, status: str) -> None:
    frontier = [(task_id, status)]
    while frontier:
        cause, how = frontier.pop()
        dependents = (
            await db.scalars(
                select(Task.id).where(
                    Task.id.in_(
                        select(TaskDependency.task_id).where(TaskDependency.depends_on == cause)
                    ),
                    Task.status == TaskStatus.PENDING.value,
                )
            )
        ).all()
        if not dependents:
            continue
        now = utcnow()
        values: dict[str, Any] = {
            "status": TaskStatus.CANCELLED.value,
            "error": f"dependency {cause} {how}",
            "completed_at": now,
            "updated_at": now,
        }
        await db.execute(
            update(Task)
            .where(Task.id.in_(dependents), Task.status == TaskStatus.PENDING.value)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        frontier.extend((ident, TaskStatus.CANCELLED.value) for ident in dependents)


# --- what is claimable ----------------------------------------------------------------------


# The fixed parts of the claim conditions, built once: an `aliased(Task)` and a table-valued
# alias cost more to build than the claim's statement takes to run (py-spy: 25 % of a claim's
# CPU went to building them). Expressions are immutable, so every claim can share them.
_DEPENDENCY = aliased(Task)
_DEPENDENCIES_DONE = ~exists(
    select(TaskDependency.task_id)
    .join(_DEPENDENCY, _DEPENDENCY.id == TaskDependency.depends_on)
    .where(TaskDependency.task_id == Task.id, _DEPENDENCY.status != TaskStatus.COMPLETED.value)
)
_NEEDED = func.json_each(Task.capabilities).table_valued("value").alias("needed")


# What makes a task claimable, whoever claims it.
_READY = (
    Task.status == TaskStatus.PENDING.value,
    Task.attempts < Task.max_attempts,
    _DEPENDENCIES_DONE,
)


def _covered_by(postgres: bool, have: BindParameter[Any]) -> ColumnElement[bool]:
    """The task's capabilities are all among `have` (the claimer's, sorted, no repeats)."""
    if postgres:
        return or_(Task.capabilities.is_(None), Task.capabilities.op("<@")(have))
    missing = select(_NEEDED.c.value).where(_NEEDED.c.value.not_in(have)).exists()
    return or_(Task.capabilities.is_(None), ~missing)


def _capabilities(postgres: bool, key: str | None, value: list[str] | None) -> BindParameter[Any]:
    if postgres:
        return bindparam(key, value, type_=JSONB)
    return bindparam(key, value, expanding=True)


def claimable(
    db: AsyncSession,
    capabilities: Sequence[str] | None = None,
    agent_id: str | None = None,
    session_id: str | None = None,
) -> list[ColumnElement[bool]]:
    """Conditions of a claimable task (for `capabilities` and `agent_id` when given)."""
    conditions = list(_READY)
    if capabilities is not None:
        postgres = db.get_bind().dialect.name == "postgresql"
        have = _capabilities(postgres, None, sorted(set(capabilities)))
        conditions.append(_covered_by(postgres, have))
    if agent_id is not None:
        # Unassigned, or assigned to this claimer.
        conditions.append(or_(Task.agent_id.is_(None), Task.agent_id == agent_id))
    if session_id is not None:
        conditions.append(Task.session_id == session_id)
    return conditions


def claim_conditions(
    postgres: bool, capabilities: bool, session: bool
) -> list[ColumnElement[bool]]:
    """`claimable`'s conditions for a claimer, its values left as named parameters, so a
    statement built on them once serves every claim: `c_agent`; `c_capabilities` (sorted,
    no repeats) when `capabilities`; `c_session` when `session`."""
    conditions = list(_READY)
    if capabilities:
        conditions.append(_covered_by(postgres, _capabilities(postgres, "c_capabilities", None)))
    conditions.append(or_(Task.agent_id.is_(None), Task.agent_id == bindparam("c_agent")))
    if session:
        conditions.append(Task.session_id == bindparam("c_session"))
    return conditions
