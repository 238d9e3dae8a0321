"""GET /api: an index of the REST resources, so the address the start-up banner prints answers.

Built from the application's OpenAPI document (the same one /docs shows): a route added
anywhere under /api appears here without a line of its own, and nothing listed can be missing.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from app import __version__

router = APIRouter(tags=["index"])

PREFIX = "/api/"


class Resource(BaseModel):
    """One resource: its collection URL and every operation under it."""

    name: str
    url: str
    operations: list[str] = Field(description='"METHOD /path", e.g. "GET /api/tasks/{task_id}"')


class ApiIndex(BaseModel):
    """What GET /api answers."""

    name: str
    version: str
    docs: str = Field(description="Swagger UI (served by the API itself, works offline)")
    redoc: str
    openapi: str | None
    resources: list[Resource]


HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def _resources(paths: dict[str, Any]) -> list[Resource]:
    """Group the OpenAPI document's /api/… operations by their first path segment."""
    operations: dict[str, list[str]] = {}
    for path, item in sorted(paths.items()):
        if not path.startswith(PREFIX):
            continue
        name = path[len(PREFIX) :].split("/", 1)[0]
        for method in HTTP_METHODS:
            if method in item:
                operations.setdefault(name, []).append(f"{method.upper()} {path}")
    return [
        Resource(name=name, url=f"{PREFIX}{name}", operations=ops)
        for name, ops in sorted(operations.items())
    ]


@router.get("/api", response_model=ApiIndex)
async def api_index(request: Request) -> ApiIndex:
    """The REST resources and their operations, with where the documentation is."""
    app = request.app
    return ApiIndex(
        name=app.title,
        version=__version__,
        docs="/docs",
        redoc="/redoc",
        openapi=app.openapi_url,
        resources=_resources(app.openapi().get("paths", {})),
    )
