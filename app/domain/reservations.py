"""Path reservations: advisory locks on parts of a shared workspace, with a conflict check.

An agent reserves paths before it edits them; another agent asking for an overlapping set is
told who holds what (409 RESERVATION_CONFLICT with the conflicting reservations) and nothing
is reserved. Exclusive reservations conflict with any other agent's overlapping one; shared
ones only with another agent's exclusive one (readers and writers). An agent's own
reservations never conflict with each other. Reservations expire (`ttl_seconds`, renewable)
like leases; the expiry sweeper marks them (reservation.expired), DELETE releases them
(reservation.released); creation is reservation.created — on `global` and the agent's channel.

The check and the insert are one step for the cluster: on PostgreSQL the transaction takes an
advisory lock first (reservers queue for a few milliseconds); on SQLite the insert comes
first and takes the database's write lock, so the check after it sees every committed
reservation and a conflict rolls the insert back.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.security import Role
from app.db.models import Reservation
from app.db.types import utcnow
from app.domain import access, pagination, paths
from app.domain.context import Context
from app.domain.errors import Conflict, Forbidden, Invalid, NotFound
from app.domain.rows import new_id
from app.schemas import Page, ReservationCreate, ReservationOut

RESERVATION_LOCK = 0x636D7273  # "cmrs": one reserver at a time, cluster-wide (PostgreSQL)
CONFLICT = "RESERVATION_CONFLICT"


def reservation_out(row: Reservation, now: datetime | None = None) -> ReservationOut:
    now = now or utcnow()
    return ReservationOut(
        id=row.id,
        agent_id=row.agent_id,
        paths=list(row.paths),
        exclusive=row.exclusive,
        reason=row.reason,
        created_at=row.created_at,
        expires_at=row.expires_at,
        released_at=row.released_at,
        expired_at=row.expired_at,
        active=_active(row, now),
    )


def _active(row: Reservation, now: datetime) -> bool:
    return row.released_at is None and row.expired_at is None and row.expires_at > now


def active_filter(now: datetime) -> list[ColumnElement[bool]]:
    return [
        Reservation.released_at.is_(None),
        Reservation.expired_at.is_(None),
        Reservation.expires_at > now,
    ]


def _patterns(given: list[str]) -> list[str]:
    try:
        normalised = sorted({paths.normalise(p) for p in given})
    except ValueError as exc:
        raise Invalid(str(exc), "INVALID_PATH", ("body", "paths")) from None
    return normalised


def _conflicts(
    rows: list[Reservation], agent_id: str, patterns: list[str], exclusive: bool
) -> list[Reservation]:
    """Other agents' active reservations standing in the way of (`patterns`, `exclusive`)."""
    found = []
    for row in rows:
        if row.agent_id == agent_id or not (exclusive or row.exclusive):
            continue
        if any(paths.overlaps(mine, theirs) for mine in patterns for theirs in row.paths):
            found.append(row)
    return found


async def _lock(db: AsyncSession) -> None:
    if db.get_bind().dialect.name == "postgresql":
        await db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": RESERVATION_LOCK})


async def reserve(ctx: Context, body: ReservationCreate) -> ReservationOut:
    """Reserve paths for the actor, or raise Conflict with the reservations in the way."""
    agent_id = access.acting_agent(ctx.actor, body.agent_id, "agent_id")
    patterns = _patterns(body.paths)
    db = ctx.db
    now = utcnow()
    row = Reservation(
        id=new_id("res"),
        agent_id=agent_id,
        paths=patterns,
        exclusive=body.exclusive,
        reason=body.reason,
        created_at=now,
        expires_at=now + timedelta(seconds=body.ttl_seconds),
    )
    await _lock(db)
    db.add(row)
    await db.flush()  # SQLite: the write lock, before the check
    others = (
        await db.scalars(select(Reservation).where(*active_filter(now), Reservation.id != row.id))
    ).all()
    blocking = _conflicts(list(others), agent_id, patterns, body.exclusive)
    if blocking:
        # Shaped before the rollback, which expires the rows.
        conflicts = [reservation_out(r, now).model_dump(mode="json") for r in blocking]
        holders = ", ".join(sorted({r.agent_id for r in blocking}))
        await db.rollback()
        raise Conflict(f"Reserved by {holders}", CONFLICT, {"conflicts": conflicts})
    await db.commit()
    ctx.presence.touch(agent_id, create=True)
    return reservation_out(row, now)


async def check(
    ctx: Context,
    *,
    path: str | None = None,
    agent_id: str | None = None,
    active: bool = True,
    limit: int = 50,
    cursor: str | None = None,
    order: pagination.Order = pagination.Order.ASC,
) -> Page[ReservationOut]:
    """Reservations (active ones by default), of an agent, or overlapping a path."""
    now = utcnow()
    query = select(Reservation)
    if active:
        query = query.where(*active_filter(now))
    if agent_id is not None:
        query = query.where(Reservation.agent_id == agent_id)
    if path is None:
        rows, next_cursor = await pagination.page(
            ctx.db, query, Reservation.created_at, Reservation.id, limit, cursor, order
        )
        return Page[ReservationOut](
            items=[reservation_out(r, now) for r in rows], next_cursor=next_cursor
        )
    try:
        wanted = paths.normalise(path)
    except ValueError as exc:
        raise Invalid(str(exc), "INVALID_PATH", ("query", "path")) from None
    # Overlap is decided in Python (globs): the active set is small, so read it whole.
    rows = (await ctx.db.scalars(query.order_by(Reservation.created_at, Reservation.id))).all()
    hits = [r for r in rows if any(paths.overlaps(wanted, p) for p in r.paths)]
    return Page[ReservationOut](items=[reservation_out(r, now) for r in hits[:limit]])


async def _owned(ctx: Context, reservation_id: str) -> Reservation:
    access.require_writer(ctx.actor)
    row = await ctx.db.get(Reservation, reservation_id, populate_existing=True)
    if row is None:
        raise NotFound("Reservation", reservation_id)
    if ctx.actor.role is not Role.ADMIN and row.agent_id != ctx.actor.agent_id:
        raise Forbidden(f"Reservation {reservation_id} is {row.agent_id}'s")
    return row


async def renew(ctx: Context, reservation_id: str, ttl_seconds: int | None) -> ReservationOut:
    """Push an active reservation's expiry to now + `ttl_seconds` (default: its first TTL)."""
    row = await _owned(ctx, reservation_id)
    now = utcnow()
    if not _active(row, now):
        raise Conflict(f"Reservation {reservation_id} has ended", "RESERVATION_ENDED")
    seconds = ttl_seconds or max(1, int((row.expires_at - row.created_at).total_seconds()))
    result: Any = await ctx.db.execute(
        update(Reservation)
        .where(Reservation.id == reservation_id, *active_filter(now))
        .values(expires_at=now + timedelta(seconds=seconds))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        await ctx.db.rollback()
        raise Conflict(f"Reservation {reservation_id} has ended", "RESERVATION_ENDED")
    await ctx.db.commit()
    fresh = await ctx.db.get(Reservation, reservation_id, populate_existing=True)
    assert fresh is not None
    return reservation_out(fresh)


async def release(ctx: Context, reservation_id: str) -> None:
    """Release a reservation (reservation.released); releasing an ended one does nothing."""
    await _owned(ctx, reservation_id)
    now = utcnow()
    result: Any = await ctx.db.execute(
        update(Reservation)
        .where(
            Reservation.id == reservation_id,
            Reservation.released_at.is_(None),
            Reservation.expired_at.is_(None),
        )
        .values(released_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount:
        await ctx.db.commit()
    else:
        await ctx.db.rollback()


async def expire(db: AsyncSession, now: datetime | None = None) -> int:
    """Mark reservations past their expiry (reservation.expired); how many."""
    now = now or utcnow()
    result: Any = await db.execute(
        update(Reservation)
        .where(
            Reservation.released_at.is_(None),
            Reservation.expired_at.is_(None),
            Reservation.expires_at <= now,
        )
        .values(expired_at=now)
        .execution_options(synchronize_session=False)
    )
    await db.commit()
    return int(result.rowcount or 0)
