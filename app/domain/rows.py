"""Row-level helpers every resource uses: generated ids, insert-or-refuse, and Snapshot (a row
as a statement read or wrote it, without an ORM object)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.group_commit import Taken
from app.domain.context import Writes
from app.domain.errors import AlreadyExists


class Snapshot(SimpleNamespace):
    """A row as a statement read or wrote it: the columns as attributes (and a task's
    `dependencies` as `Dependency` rows), what `task_out` and `subtask_out` read. Not an ORM
    object: loading one through the ORM (identity map, instance state, the joined loader) was
    ≈ 23 % of a PATCH's CPU (py-spy), and building a transient one ≈ 8 % of a create's."""


@dataclass(frozen=True, slots=True)
class Dependency:
    depends_on: str


def snapshot(table: Any, values: dict[str, Any]) -> Snapshot:
    """The row an INSERT of `values` into `table` wrote: NULL where no value was given (every
    column with a default is given one by the callers)."""
    return Snapshot(**{**dict.fromkeys(table.c.keys()), **values})


def new_id(prefix: str) -> str:
    """`<prefix>_<uuid hex>`: the id of a row whose client chose none."""
    return f"{prefix}_{uuid.uuid4().hex}"


async def insert(db: AsyncSession, row: Any, kind: str) -> None:
    """Add and commit `row`; AlreadyExists when its id is taken (nothing written)."""
    db.add(row)
    try:
        await db.commit()
    except IntegrityError:
        await db.rollback()
        raise AlreadyExists(kind, row.id) from None


async def insert_values(
    writes: Writes, table: Any, values: dict[str, Any], kind: str, chosen: bool
) -> Snapshot:
    """`values` (by column key) committed with concurrent requests' rows, no ORM object built;
    the row as written (what the batch fills in included), or AlreadyExists when the id is
    taken."""
    try:
        await writes.insert(table, values, chosen)
    except (Taken, IntegrityError):
        raise AlreadyExists(kind, values["id"]) from None
    return snapshot(table, values)
