"""Keyset pagination on (sort column, id), either way, with an opaque cursor.

A cursor is a position (the last row's sort value and id); the page after it runs in the order
asked, so a client keeps paging one way by passing the same `order` each time.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from sqlalchemy import Select, String, and_, or_, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.domain.errors import Invalid

M = TypeVar("M")


class Order(enum.StrEnum):
    """Which way a list runs: `asc` oldest first (the default), `desc` newest first."""

    ASC = "asc"
    DESC = "desc"


def encode_cursor(stamp: datetime, ident: str, stored: str | None = None) -> str:
    """The opaque `next_cursor`: the last row's sort value (and its stored text on SQLite)."""
    raw = orjson.dumps(
        [stamp.isoformat(), ident] if stored is None else [stamp.isoformat(), ident, stored]
    )
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str, str | None]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, ident, *rest = orjson.loads(raw)
        stored = rest[0] if len(rest) == 1 else None
        if not isinstance(ident, str) or not isinstance(stamp, str) or len(rest) > 1:
            raise ValueError
        if rest and not (isinstance(stored, str) and len(stored) <= 40):
            raise ValueError
        if "\x00" in ident or (stored is not None and "\x00" in stored):
            raise ValueError  # PostgreSQL text cannot hold NUL
        parsed = datetime.fromisoformat(stamp)
        if parsed.tzinfo is None:
            raise ValueError
        # A forged offset can put the instant outside datetime's range once in UTC.
        return parsed.astimezone(UTC), ident, stored
    except (ValueError, TypeError, OverflowError, binascii.Error, orjson.JSONDecodeError):
        raise Invalid(
            "cursor is not one this API handed out", "INVALID_CURSOR", ("query", "cursor")
        ) from None


async def page(
    db: AsyncSession,
    query: Select[M],
    sort: InstrumentedAttribute[datetime],
    ident: InstrumentedAttribute[str],
    limit: int,
    cursor: str | None,
    order: Order = Order.ASC,
) -> tuple[Sequence[M], str | None]:
    """One page of `query` ordered by (sort, id) in `order`, and the cursor of the next page.

    A cursor is a position (the last row's sort value and id); the page after it runs in
    `order`, so a client keeps paging one way by passing the same `order` each time.
    """
    # SQLite keeps timestamps as text, and rows written by raw SQL carry CURRENT_TIMESTAMP's
    # shorter form ("… 12:00:00" beside "… 12:00:00.000000"): equal times, different text. The
    # rows are sorted by that text, so on SQLite the cursor holds the text too and compares it
    # as text; otherwise a page boundary on such a row would lose (or repeat) rows.
    text_key: Any = type_coerce(sort, String) if db.get_bind().dialect.name == "sqlite" else None
    descending = order is Order.DESC
    if cursor is not None:
        stamp, last, stored = decode_cursor(cursor)
        key: Any = sort
        value: Any = stamp
        if text_key is not None and stored is not None:
            key, value = text_key, stored
        if descending:
            query = query.where(or_(key < value, and_(key == value, ident < last)))
        else:
            query = query.where(or_(key > value, and_(key == value, ident > last)))
    keys = (sort.desc(), ident.desc()) if descending else (sort.asc(), ident.asc())
    query = query.order_by(*keys).limit(limit + 1)
    if text_key is None:
        rows: Sequence[Any] = (await db.scalars(query)).all()
        texts: list[str | None] = [None] * len(rows)
    else:
        result = (await db.execute(query.add_columns(text_key.label("sort_text")))).all()
        rows = [row[0] for row in result]
        texts = [row[1] for row in result]
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last_row = rows[-1]
    return rows, encode_cursor(
        getattr(last_row, sort.key), getattr(last_row, ident.key), texts[limit - 1]
    )
