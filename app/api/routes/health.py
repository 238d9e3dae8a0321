"""GET /health on the API port: the service and its database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from app.db.engine import ping

router = APIRouter(tags=["health"])


class ApiHealth(BaseModel):
    status: Literal["healthy", "unhealthy"]
    type: Literal["api"] = "api"
    port: int
    database: Literal["reachable", "unreachable"]
    timestamp: str


@router.get(
    "/health",
    response_model=ApiHealth,
    responses={503: {"model": ApiHealth, "description": "The database is unreachable."}},
)
async def health(request: Request, response: Response) -> dict[str, Any]:
    """Liveness of the API and reachability of its database (503 when unreachable)."""
    state = request.app.state
    reachable = await ping(state.engine)
    if not reachable:
        response.status_code = 503
    return {
        "status": "healthy" if reachable else "unhealthy",
        "type": "api",
        "port": request.scope.get("server", ("", state.settings.api_port))[1],
        "database": "reachable" if reachable else "unreachable",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
