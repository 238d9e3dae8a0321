"""Reads and writes shared by the REST routes and the WebSocket message hook.

Writes commit, then wake the bridge: on SQLite that is how it learns of the new outbox rows
at once (on PostgreSQL the trigger's NOTIFY does it too). Status changes are compare-and-set
updates (``… WHERE id = :id AND status = :seen``), so two concurrent PATCHes cannot both move
a task out of the same state, on either database, without holding a transaction open.
"""

from __future__ import annotations

import base64
import binascii
import enum
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
from sqlalchemy import ColumnElement, Select, String, and_, or_, type_coerce, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.api.errors import ApiError
from app.db.models import FINISHED, Message, Task, TaskStatus
from app.db.types import utcnow

M = TypeVar("M")

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


def new_id(prefix: str) -> str:
    """`<prefix>_<uuid hex>`: the id of a row whose client chose none."""
    return f"{prefix}_{uuid.uuid4().hex}"


async def commit(db: AsyncSession, wake: Callable[[], None] | None) -> None:
    """Commit, then wake the bridge so the new events go out now."""
    await db.commit()
    if wake is not None:
        wake()


async def insert(db: AsyncSession, row: Any, kind: str, wake: Callable[[], None] | None) -> None:
    """Add and commit `row`; 409 ALREADY_EXISTS when its id is taken."""
    db.add(row)
    try:
        await commit(db, wake)
    except IntegrityError:
        await db.rollback()
        raise ApiError(409, "ALREADY_EXISTS", f"{kind} {row.id} already exists") from None


# --- pagination: keyset on (sort column, id), either way ---------------------------------------


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
        # In UTC, as the database compares it; an offset can push year 1 or 9999 out of range.
        parsed = parsed.astimezone(UTC)
        return parsed, ident, stored
    except (ValueError, TypeError, OverflowError, binascii.Error, orjson.JSONDecodeError):
        raise ApiError(
            422,
            "INVALID_CURSOR",
            "cursor is not one this API handed out",
            loc=("query", "cursor"),
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


# --- task and subtask lifecycle --------------------------------------------------------------


def check_transition(kind: str, ident: str, current: str, wanted: str | None) -> None:
    """409 ILLEGAL_TRANSITION unless `current` → `wanted` is allowed (or no change)."""
    if wanted is None or wanted == current:
        return
    if TaskStatus(wanted) not in TRANSITIONS[TaskStatus(current)]:
        hint = " (finished: it does not change any more)" if current in FINISHED else ""
        raise ApiError(
            409,
            "ILLEGAL_TRANSITION",
            f"{kind} {ident} cannot go from {current} to {wanted}{hint}",
        )


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


async def update_lifecycle(
    db: AsyncSession,
    model: type[M],
    kind: str,
    ident: str,
    changes: dict[str, Any],
    wake: Callable[[], None] | None,
) -> M:
    """Apply a PATCH to a task or subtask: validated, compare-and-set, retried on a race."""
    table: Any = model
    for _ in range(5):
        row: Any = await db.get(model, ident, populate_existing=True)
        if row is None:
            from app.api.errors import not_found

            raise not_found(kind, ident)
        current = row.status
        check_transition(kind, ident, current, changes.get("status"))
        effective = {k: v for k, v in changes.items() if getattr(row, k) != v}
        if not effective:
            unchanged: M = row
            return unchanged  # nothing changes: no write, no event
        if current in FINISHED:
            raise ApiError(
                409, "FINISHED", f"{kind} {ident} is {current}: it does not change any more"
            )
        values = lifecycle_values(current, effective)
        if "started_at" in values and row.started_at is not None:
            values.pop("started_at")  # keep the first start
        result: Any = await db.execute(
            update(table)
            .where(table.id == ident, table.status == current)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            await commit(db, wake)
            fresh: M | None = await db.get(model, ident, populate_existing=True)
            assert fresh is not None
            return fresh
        await db.rollback()  # someone changed the status meanwhile: look again
    raise ApiError(409, "CONFLICT", f"{kind} {ident} is changing too fast; retry")


# --- messages --------------------------------------------------------------------------------


async def create_message(
    db: AsyncSession,
    *,
    from_agent: str,
    to_agent: str,
    content: str,
    data: Any = None,
    session_id: str | None = None,
    ttl_seconds: float | None = None,
    ident: str | None = None,
    wake: Callable[[], None] | None = None,
) -> Message:
    """Store a message; its trigger writes the message.new event the bridge delivers."""
    now = utcnow()
    message = Message(
        id=ident or new_id("msg"),
        from_agent=from_agent,
        to_agent=to_agent,
        session_id=session_id,
        content=content,
        data=data,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_seconds) if ttl_seconds else None,
    )
    await insert(db, message, "Message", wake)
    return message


def message_filters(
    to_agent: str | None, from_agent: str | None, session_id: str | None, unread: bool | None
) -> list[ColumnElement[bool]]:
    filters: list[ColumnElement[bool]] = [Message.expired_at.is_(None)]
    if to_agent is not None:
        filters.append(Message.to_agent == to_agent)
    if from_agent is not None:
        filters.append(Message.from_agent == from_agent)
    if session_id is not None:
        filters.append(Message.session_id == session_id)
    if unread is True:
        filters.append(Message.read_at.is_(None))
    elif unread is False:
        filters.append(Message.read_at.is_not(None))
    return filters


def task_filters(
    status: str | None, agent_id: str | None, session_id: str | None
) -> list[ColumnElement[bool]]:
    filters: list[ColumnElement[bool]] = []
    if status is not None:
        filters.append(Task.status == status)
    if agent_id is not None:
        filters.append(Task.agent_id == agent_id)
    if session_id is not None:
        filters.append(Task.session_id == session_id)
    return filters
