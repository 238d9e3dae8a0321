"""Who is calling a tool: the bearer token (token mode) or `?agent_id=` (open mode).

Token mode: the SDK's bearer middleware asks `JwtVerifier` (our JWTs, app/core/security.py),
refuses the request with 401 and RFC 9728 metadata when it fails, and keeps the verified
token for the request; `caller` turns it back into the token's `Identity`. A tool never takes
the caller's id as an argument, so a token for B acts as B whatever the arguments say.

Open mode (loopback): the agent names itself on the URL, `/mcp?agent_id=coder-1`, as on the
WebSocket, and acts as that agent (the agent role: the ownership rules of docs/security.md
apply exactly as with a token).
"""

from __future__ import annotations

from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken

from app.core.security import Identity, Role, TokenCodec, TokenError
from app.realtime.channels import is_valid_id


class CallerUnknown(Exception):
    """No identity for this call; `code` and `message` go back as the tool error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class JwtVerifier:
    """The SDK's `TokenVerifier` over our tokens: an `AccessToken` carrying the identity."""

    def __init__(self, codec: TokenCodec) -> None:
        self._codec = codec

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            identity = self._codec.verify(token)
        except TokenError:
            return None
        assert identity.agent_id is not None  # verify() requires `sub`
        return AccessToken(
            token=token,
            client_id=identity.agent_id,
            subject=identity.agent_id,
            scopes=[identity.role.value],
            expires_at=int(identity.expires_at) if identity.expires_at else None,
            claims={"role": identity.role.value, "session_id": identity.session_id},
        )


def _from_token(token: AccessToken) -> Identity:
    claims: dict[str, Any] = token.claims or {}
    return Identity(
        agent_id=token.subject,
        session_id=claims.get("session_id"),
        role=Role(claims.get("role", Role.AGENT.value)),
        expires_at=float(token.expires_at) if token.expires_at else None,
    )


def caller(token_mode: bool, query: dict[str, str] | None) -> Identity:
    """The identity of the tool call being served (`query`: the request's URL parameters)."""
    if token_mode:
        token = get_access_token()
        if token is None:  # the bearer middleware lets nothing through without one
            raise CallerUnknown("UNAUTHORIZED", "A Bearer token is required")
        return _from_token(token)
    agent_id = (query or {}).get("agent_id")
    if not agent_id:
        raise CallerUnknown(
            "AGENT_ID_REQUIRED",
            "Say who you are: connect to /mcp?agent_id=<your-agent-id> (or set "
            "CONTEXT_MANAGER_AGENT_ID for `context-manager mcp`).",
        )
    if not is_valid_id(agent_id):
        raise CallerUnknown(
            "INVALID_AGENT_ID",
            "agent_id must be 1-128 letters, digits or '_.:@-' (not starting with one of .:@-)",
        )
    return Identity(agent_id=agent_id, session_id=None, role=Role.AGENT)
