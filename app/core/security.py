"""Identities and tokens: who a connection or a request speaks for.

Tokens are signed JWTs:

    sub         the agent id (required)
    role        "agent" (default), "dashboard" or "admin"
    session_id  optional: the session the agent works in
    exp         expiry (required), iat optional

HS256 with SECRET_KEY by default; RS256/ES256 when JWT_PUBLIC_KEY is set (then only the holder of
the private key mints tokens; `context-manager token create` needs JWT_PRIVATE_KEY for that).
Errors never echo the token or the key.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from app.core.config import Settings
from app.realtime.channels import is_valid_id


class Role(enum.StrEnum):
    AGENT = "agent"
    DASHBOARD = "dashboard"  # reads everything, publishes like an agent
    ADMIN = "admin"  # may also publish on global/metrics and system events over REST


@dataclass(frozen=True, slots=True)
class Identity:
    agent_id: str | None
    session_id: str | None
    role: Role
    # Unix time after which the identity is no longer valid; None in open mode.
    expires_at: float | None = None


class TokenError(Exception):
    """A token was refused. `expired` tells a refresh apart from a bad credential."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


def _read_key(value: str | None) -> str | None:
    """A PEM key given inline or as a path to a file."""
    if not value:
        return None
    if "-----BEGIN" in value:
        return value
    return Path(value).expanduser().read_text()


class TokenCodec:
    """Mints and verifies tokens for one Settings."""

    def __init__(self, settings: Settings) -> None:
        self.algorithm = settings.jwt_algorithm
        secret = settings.secret_key.get_secret_value() if settings.secret_key else None
        if self.algorithm == "HS256":
            self._verify_key: Any = secret
            self._sign_key: Any = secret
        else:
            self._verify_key = _read_key(settings.jwt_public_key)
            private = (
                settings.jwt_private_key.get_secret_value() if settings.jwt_private_key else None
            )
            self._sign_key = _read_key(private)
        self._leeway = settings.jwt_leeway

    @property
    def can_verify(self) -> bool:
        return bool(self._verify_key)

    def create(
        self,
        agent_id: str,
        *,
        role: Role = Role.AGENT,
        ttl: float = 3600,
        session_id: str | None = None,
    ) -> str:
        """A signed token for `agent_id`, valid for `ttl` seconds."""
        if not self._sign_key:
            raise TokenError("no signing key configured (SECRET_KEY or JWT_PRIVATE_KEY)")
        if not is_valid_id(agent_id):
            raise TokenError("agent id is not a valid id")
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": agent_id,
            "role": role.value,
            "iat": now,
            "exp": now + int(ttl),
        }
        if session_id is not None:
            claims["session_id"] = session_id
        return jwt.encode(claims, self._sign_key, algorithm=self.algorithm)

    def verify(self, token: str) -> Identity:
        """The identity a token carries, or TokenError."""
        if not self._verify_key:
            raise TokenError("token authentication is not configured")
        if not isinstance(token, str) or not token or len(token) > 8192:
            raise TokenError("malformed token")
        try:
            claims = jwt.decode(
                token,
                self._verify_key,
                algorithms=[self.algorithm],
                leeway=self._leeway,
                options={"require": ["sub", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired", expired=True) from None
        except jwt.PyJWTError:
            raise TokenError("invalid token") from None
        agent_id = claims.get("sub")
        if not isinstance(agent_id, str) or not is_valid_id(agent_id):
            raise TokenError("invalid token subject")
        try:
            role = Role(claims.get("role", Role.AGENT.value))
        except ValueError:
            raise TokenError("invalid token role") from None
        session_id = claims.get("session_id")
        if session_id is not None and (
            not isinstance(session_id, str) or not is_valid_id(session_id)
        ):
            raise TokenError("invalid token session_id")
        return Identity(agent_id, session_id, role, float(claims["exp"]))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer …` header value."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
