"""What the domain layer raises; each front door maps it to its own errors.

    DomainError            code (stable, as in the API's `code`), message
     ├── NotFound          404 · WebSocket INVALID_MESSAGE · MCP NOT_FOUND
     ├── Forbidden         403 · FORBIDDEN
     ├── Invalid           422 (with `loc`) · INVALID_MESSAGE (or the code it carries)
     └── Conflict          409 · the code it carries
          ├── AlreadyExists     ALREADY_EXISTS
          └── IllegalTransition ILLEGAL_TRANSITION

`app/api/errors.py` answers them over HTTP, `app/realtime/endpoint.py` as error frames. A
conflict carries the code a client acts on (`FINISHED`, `MESSAGE_EXPIRED`, `CONFLICT`, …).
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A request the domain refuses; `code` is stable, `message` is for people."""

    code = "ERROR"

    def __init__(
        self, message: str, code: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        # More for the client beside detail and code (e.g. a conflict's `conflicts`).
        self.details = details or {}


class NotFound(DomainError):
    code = "NOT_FOUND"

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident} not found")


class Forbidden(DomainError):
    code = "FORBIDDEN"


class Invalid(DomainError):
    """Input that passed the schema but not the rules; `loc` names the field."""

    code = "INVALID"

    def __init__(self, message: str, code: str, loc: tuple[str, ...] = ("body",)) -> None:
        super().__init__(message, code)
        self.loc = loc


class Conflict(DomainError):
    code = "CONFLICT"


class AlreadyExists(Conflict):
    code = "ALREADY_EXISTS"

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident} already exists")


class IllegalTransition(Conflict):
    code = "ILLEGAL_TRANSITION"
