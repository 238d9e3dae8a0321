"""API errors with a stable `code` beside the human `detail`.

    401 UNAUTHORIZED / INVALID_TOKEN / TOKEN_EXPIRED   token mode: no, bad or expired token
    403 FORBIDDEN                 the token's role may not do this (docs/security.md)
    404 NOT_FOUND                 unknown id in the path
    409 ALREADY_EXISTS            POST with an id that is taken
    409 ILLEGAL_TRANSITION        a status change the lifecycle forbids
    409 FINISHED                  a change to a finished task / ended session
    409 MESSAGE_EXPIRED           reading a message past its TTL
    422 INVALID_CURSOR            a `cursor` this API did not hand out
    413 PAYLOAD_TOO_LARGE         a body above MAX_REQUEST_BYTES
    422 INVALID_CHANNEL / INVALID_EVENT   POST /api/events (the WebSocket protocol's codes)
    422 MISSING_FIELD             a writer's id left out where no token names it

The domain layer raises `DomainError`s (app/domain/errors.py); `install_error_handlers` maps
each class to its status here, so a rule's error reads the same over every front door.

FastAPI's own 422 (request validation) keeps its standard `detail` list, and every 422 of
ours has that same shape (a list of {loc, msg, type}) plus `code`, so one schema describes all
422s. A body that is not JSON at all is FastAPI's 400 ``{"detail": …}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.domain.errors import Conflict, DomainError, Forbidden, Invalid, NotFound
from app.schemas import ErrorBody, PlainError


class ApiError(Exception):
    """Raised by a route; answered as ``{"detail": …, "code": …}`` with `status`."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        headers: dict[str, str] | None = None,
        loc: tuple[str, ...] = ("body",),
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers
        self.loc = loc


async def _handle(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    if exc.status == 422:
        return invalid(exc.loc, exc.detail, exc.code)
    return JSONResponse(
        {"detail": exc.detail, "code": exc.code}, status_code=exc.status, headers=exc.headers
    )


def invalid(loc: tuple[str, ...], message: str, code: str) -> JSONResponse:
    """A 422 in FastAPI's validation shape, with the stable `code` beside it."""
    detail = [{"loc": list(loc), "msg": message, "type": code}]
    return JSONResponse({"detail": detail, "code": code}, status_code=422)


_DOMAIN_STATUS: tuple[tuple[type[DomainError], int], ...] = (
    (NotFound, 404),
    (Forbidden, 403),
    (Conflict, 409),
    (Invalid, 422),
)


def domain_status(exc: DomainError) -> int:
    for kind, status in _DOMAIN_STATUS:
        if isinstance(exc, kind):
            return status
    return 400


async def _handle_domain(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    if isinstance(exc, Invalid):
        return invalid(exc.loc, exc.message, exc.code)
    body = {"detail": exc.message, "code": exc.code, **exc.details}
    return JSONResponse(body, status_code=domain_status(exc))


def install_error_handlers(app: FastAPI) -> None:
    """Answer ApiError and the domain's errors with their status and body."""
    app.add_exception_handler(ApiError, _handle)
    app.add_exception_handler(DomainError, _handle_domain)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for the error statuses a route can return."""
    described = {
        400: "The body is not JSON.",
        403: "The caller may not do this (docs/security.md: the ownership table).",
        404: "Unknown id.",
        409: "The change conflicts with the current state.",
    }
    return {
        status: {
            "model": PlainError if status == 400 else ErrorBody,
            "description": described.get(status, "Error."),
        }
        for status in statuses
    }
