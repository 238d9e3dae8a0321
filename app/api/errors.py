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
    422 VALIDATION_ERROR          the request does not fit the schema (FastAPI's validation)
    422 MISSING_FIELD             a writer's id left out where no token names it
    503 DATABASE_BUSY             the database timed out, is unreachable, or ended the transaction
                                  (a deadlock; nothing committed) (Retry-After: 1)
    503 DATABASE_CONNECTION_LOST  the database closed this request's connection mid-request (a
                                  restart, an ended backend): a write's outcome is unknown, so
                                  read before retrying one (Retry-After: 1)

The domain layer raises `DomainError`s (app/domain/errors.py); `install_error_handlers` maps
each class to its status here, so a rule's error reads the same over every front door.

Every 422 has FastAPI's standard shape, a `detail` list of {loc, msg, type} (validation errors
add FastAPI's `input` and `ctx`), plus `code`, so one schema describes all 422s. A body that is
not JSON (or that Python's parser gives up on: nested past ~1,000 levels, an integer of more than
4,300 digits) is FastAPI's 400 ``{"detail": …}``.

The echoed `input` is whatever the client sent, and Python's JSON parser reads more than strict
JSON can carry back: ``NaN``, ``Infinity`` and ``1e400`` (read as infinity) and lone surrogates
(``"\\ud800"``). Those are spelled out as strings ("NaN", "Infinity", "-Infinity", the surrogate
as the text ``\\ud800``); an error whose input cannot be shown even so is answered without it.
Nothing in a client's input makes an error answer fail.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError

from app.db.shared_transaction import transient
from app.domain.errors import Conflict, DomainError, Forbidden, Invalid, NotFound
from app.schemas import ErrorBody, PlainError

logger = logging.getLogger("context_manager.api")


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
        encodable({"detail": exc.detail, "code": exc.code}),
        status_code=exc.status,
        headers=exc.headers,
    )


def invalid(loc: tuple[str, ...], message: str, code: str) -> JSONResponse:
    """A 422 in FastAPI's validation shape, with the stable `code` beside it."""
    detail = [{"loc": list(loc), "msg": message, "type": code}]
    return JSONResponse(encodable({"detail": detail, "code": code}), status_code=422)


async def _validation_failed(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 body, made safe to encode whatever the client sent (module docstring)."""
    assert isinstance(exc, RequestValidationError)
    detail = [_shown(error) for error in exc.errors()]
    body = {"detail": detail, "code": "VALIDATION_ERROR"}
    try:
        return JSONResponse(body, status_code=422)
    except (ValueError, TypeError, RecursionError):
        # Belt and braces: whatever still does not encode goes; the error itself stays.
        bare = [_bare(item) for item in detail]
        return JSONResponse({"detail": bare, "code": "VALIDATION_ERROR"}, status_code=422)


def _shown(error: Mapping[str, Any]) -> dict[str, Any]:
    """One validation error as FastAPI shows it, with its input made encodable."""
    try:
        shown: dict[str, Any] = encodable(jsonable_encoder(error))
        return shown
    except (ValueError, TypeError, RecursionError):
        # An input too deep (or too odd) to walk: answer the error without it.
        fallback: dict[str, Any] = encodable(jsonable_encoder(_bare(error)))
        return fallback


def _bare(error: Mapping[str, Any]) -> dict[str, Any]:
    return {key: error[key] for key in ("type", "loc", "msg") if key in error}


def encodable(value: Any) -> Any:
    """`value` with what strict JSON in UTF-8 cannot carry spelled out as strings."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {_text(str(key)): encodable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [encodable(item) for item in value]
    return value


def _text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate: show it as the escape the client wrote (`\ud800`).
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


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
    return JSONResponse(encodable(body), status_code=domain_status(exc))


async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    """The database refused or timed out (SQLite busy past its timeout, PostgreSQL down), or
    lost this request's connection: a 503 the client may retry, not an unexplained 500.

    A refusal or timeout committed nothing. A lost connection (the driver's error with
    `connection_invalidated`: the server restarted or ended the backend while the request
    used it) may have lost it during the COMMIT, so the body says the outcome is unknown;
    the pool has already discarded the connection. A deadlock or serialization failure
    (PostgreSQL ended the transaction) committed nothing either. Any other DBAPIError is a
    bug: re-raised, a 500."""
    assert isinstance(exc, DBAPIError)
    logger.warning("database unavailable: %s", str(exc.orig)[:200])
    headers = {"Retry-After": "1"}
    if isinstance(exc, OperationalError) and not exc.connection_invalidated:
        body = {
            "detail": "The database is busy or unreachable; retry shortly",
            "code": "DATABASE_BUSY",
        }
    elif transient(exc):
        body = {
            "detail": "The database ended this request's transaction (a deadlock or a"
            " serialization failure) and committed nothing; retry it",
            "code": "DATABASE_BUSY",
        }
    elif exc.connection_invalidated:
        body = {
            "detail": "The database connection was lost mid-request; a write may or may not"
            " have been committed: read before retrying it",
            "code": "DATABASE_CONNECTION_LOST",
        }
    else:
        raise exc
    return JSONResponse(body, status_code=503, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Answer ApiError and the domain's errors with their status and body, and request
    validation errors safely."""
    app.add_exception_handler(ApiError, _handle)
    app.add_exception_handler(DomainError, _handle_domain)
    app.add_exception_handler(RequestValidationError, _validation_failed)
    app.add_exception_handler(DBAPIError, _database_unavailable)


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
