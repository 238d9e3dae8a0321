"""Row-level helpers every resource uses: generated ids and insert-or-refuse."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

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
