"""/api/reservations: advisory path reservations — reserve, check, renew, release."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.api.deps import ContextDep, Cursor, Limit, OrderQuery, PathId
from app.api.errors import responses
from app.domain import reservations
from app.domain.pagination import Order
from app.schemas import (
    Id,
    Page,
    ReservationConflict,
    ReservationCreate,
    ReservationOut,
    ReservationRenew,
)

router = APIRouter(prefix="/api/reservations", tags=["reservations"])


@router.post(
    "",
    status_code=201,
    response_model=ReservationOut,
    responses={
        **responses(400, 403),
        409: {
            "model": ReservationConflict,
            "description": "RESERVATION_CONFLICT: another agent holds an overlapping "
            "reservation; nothing was reserved.",
        },
    },
)
async def reserve(body: ReservationCreate, ctx: ContextDep) -> ReservationOut:
    """Reserve paths (files, directories, globs) for an agent; reservation.created."""
    return await reservations.reserve(ctx, body)


@router.get("", response_model=Page[ReservationOut])
async def check_reservations(
    ctx: ContextDep,
    path: Annotated[
        str | None,
        Query(max_length=500, description="Only reservations that overlap this path or glob."),
    ] = None,
    agent_id: Annotated[Id | None, Query()] = None,
    active: Annotated[bool, Query(description="false: ended ones too.")] = True,
    limit: Limit = 50,
    cursor: Cursor = None,
    order: OrderQuery = Order.ASC,
) -> Page[ReservationOut]:
    """Who holds what: active reservations, of an agent, or overlapping `path`."""
    return await reservations.check(
        ctx, path=path, agent_id=agent_id, active=active, limit=limit, cursor=cursor, order=order
    )


@router.post(
    "/{reservation_id}/renew",
    response_model=ReservationOut,
    responses=responses(400, 403, 404, 409),
)
async def renew(reservation_id: PathId, body: ReservationRenew, ctx: ContextDep) -> ReservationOut:
    """Extend an active reservation (409 RESERVATION_ENDED once released or expired)."""
    return await reservations.renew(ctx, reservation_id, body.ttl_seconds)


@router.delete(
    "/{reservation_id}",
    status_code=204,
    response_class=Response,
    responses=responses(403, 404),
)
async def release(reservation_id: PathId, ctx: ContextDep) -> Response:
    """Release a reservation (reservation.released)."""
    await reservations.release(ctx, reservation_id)
    return Response(status_code=204)
