"""Who is calling the REST API: the `IdentityDep` every /api route depends on.

Open mode: every caller acts as the server (the admin role), as the seed's API did. Token mode:
`Authorization: Bearer <token>` is required (401 without or with a bad one). What an identity
may then do — the dashboard role reads only, an agent acts only as itself — is decided by the
domain layer (app/domain/access.py), the same for every front door.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.errors import ApiError
from app.core.security import Identity, Role, TokenError, bearer_token

SERVER_IDENTITY = Identity(agent_id=None, session_id=None, role=Role.ADMIN)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def require_identity(request: Request) -> Identity:
    """The caller's identity, or 401/403."""
    tokens = request.app.state.manager.tokens
    if tokens is None:
        identity = SERVER_IDENTITY
    else:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise ApiError(401, "UNAUTHORIZED", "A Bearer token is required", _CHALLENGE)
        try:
            identity = tokens.verify(token)
        except TokenError as exc:
            code = "TOKEN_EXPIRED" if exc.expired else "INVALID_TOKEN"
            raise ApiError(401, code, str(exc), _CHALLENGE) from None
    request.state.identity = identity
    return identity


IdentityDep = Annotated[Identity, Depends(require_identity)]
