"""Who may read the operations endpoints: `/stats`, `/metrics`, and `/health`'s channel names.

Open mode: anyone (the seed's clients and a local Prometheus keep working). Token mode: a
dashboard or admin token (`Authorization: Bearer …`), the roles that already read every
channel; without one `/stats` and `/metrics` answer 401 (no, bad or expired token) or 403 (an
agent's token), and `/health` counts channels by kind instead of naming them. `/livez`,
`/readyz` and `/health` itself stay open: balancers and orchestrators probe without
credentials. docs/security.md ("Operations endpoints") has the table.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from app.core.config import Settings
from app.core.security import Role, TokenCodec, TokenError, bearer_token
from app.realtime.channels import parse_channel
from app.realtime.protocol import ProtocolError

OPERATOR_ROLES = frozenset({Role.DASHBOARD, Role.ADMIN})
CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request may not read an operations endpoint, as the REST API says it."""

    status: int
    code: str
    detail: str

    def body(self) -> dict[str, str]:
        return {"detail": self.detail, "code": self.code}

    def headers(self) -> dict[str, str]:
        return CHALLENGE if self.status == 401 else {}


class OperatorAccess:
    """Decides, for one Settings, whether an `Authorization` header may read operations data."""

    def __init__(self, settings: Settings) -> None:
        self.tokens = TokenCodec(settings) if settings.auth_mode == "token" else None

    def refusal(self, authorization: str | None) -> Refusal | None:
        """None when the caller may read operations data; otherwise the 401 or 403 to answer."""
        if self.tokens is None:
            return None
        token = bearer_token(authorization)
        if token is None:
            return Refusal(401, "UNAUTHORIZED", "A dashboard or admin Bearer token is required")
        try:
            identity = self.tokens.verify(token)
        except TokenError as exc:
            return Refusal(401, "TOKEN_EXPIRED" if exc.expired else "INVALID_TOKEN", str(exc))
        if identity.role not in OPERATOR_ROLES:
            return Refusal(403, "FORBIDDEN", "Operations data needs a dashboard or admin token")
        return None


def by_kind(channel_stats: dict[str, int]) -> dict[str, int]:
    """Subscribers per channel kind (`global`, `agents`, …): channelStats without the names."""
    kinds: Counter[str] = Counter()
    for name, count in channel_stats.items():
        try:
            kind = parse_channel(name).kind.value
        except ProtocolError:  # not a channel of ours: count it without naming it
            kind = "other"
        kinds[kind] += count
    return dict(kinds)
