"""Row-level helpers every resource uses: generated ids and insert-or-refuse."""

from __future__ import annotations

import uuid
from functools import cache
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapper

from app.db.group_commit import Taken
from app.domain.context import Context, Writes
from app.domain.errors import AlreadyExists


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


async def insert_new(ctx: Context, row: Any, kind: str, chosen: bool) -> None:
    """Insert `row` with the next group commit (`insert_grouped`).

    While the request's own session holds a transaction (it read what this write depends on),
    `row` goes into that transaction instead, as `insert` does: the group commit's is another
    one, and waiting for it while holding SQLite's one connection would wait for ever."""
    if ctx.db.in_transaction():
        await insert(ctx.db, row, kind)
    else:
        await insert_grouped(ctx.writes, row, kind, chosen)


async def insert_grouped(writes: Writes, row: Any, kind: str, chosen: bool) -> None:
    """`row` committed with concurrent requests' rows; AlreadyExists when its id (`chosen`
    by the client; a generated one is not looked up) is taken.

    The attributes set on `row` are its values (the others take their column defaults); what
    the batch fills in (a message's seq) is set on `row` after the commit."""
    given = inspect(row).dict
    columns = _columns(row.__class__)
    values = {key: given[attr] for key, attr in columns if attr in given}
    try:
        await writes.insert(row.__table__, values, chosen)
    except (Taken, IntegrityError):
        raise AlreadyExists(kind, row.id) from None
    for key, attr in columns:
        if attr not in given and key in values:
            setattr(row, attr, values[key])


@cache
def _columns(model: Any) -> tuple[tuple[str, str], ...]:
    """(column key, attribute name) of a mapped class's columns, read once per class."""
    mapper: Mapper[Any] = inspect(model)
    return tuple((prop.columns[0].key, prop.key) for prop in mapper.column_attrs)
