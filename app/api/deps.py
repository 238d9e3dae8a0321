"""Dependencies of the routes, as `Annotated` aliases; all read from the app's state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Path, Query, Request

from app.api.auth import IdentityDep
from app.api.middleware import CONTEXTS
from app.core.config import Settings
from app.domain.context import Context
from app.domain.pagination import Order
from app.realtime.channels import ID_PATTERN
from app.realtime.manager import ConnectionManager

if TYPE_CHECKING:
    from app.metrics import MetricsTask


def get_manager(request: Request) -> ConnectionManager:
    manager: ConnectionManager = request.app.state.manager
    return manager


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> MetricsTask:
    metrics: MetricsTask = request.app.state.metrics
    return metrics


async def get_context(request: Request, identity: IdentityDep) -> Context:
    """The domain call's context for this request's caller; its session, if the call opened
    one, is closed (rolled back if uncommitted) once the response is done, by ContextScope
    (app/api/middleware.py), which costs less than a yield dependency."""
    context: Context = request.app.state.runtime.context(identity)
    request.scope[CONTEXTS].append(context)
    return context


ContextDep = Annotated[Context, Depends(get_context)]
ManagerDep = Annotated[ConnectionManager, Depends(get_manager)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated["MetricsTask", Depends(get_metrics)]

# Path ids follow the channel id grammar: anything else cannot exist, and is a 422.
PathId = Annotated[str, Path(pattern=f"^{ID_PATTERN}$", examples=["task_0f8e…"])]
Limit = Annotated[int, Query(ge=1, le=500, description="Items per page (default 50, max 500).")]
Cursor = Annotated[
    str | None,
    Query(max_length=1000, description="`next_cursor` of the previous page."),
]
OrderQuery = Annotated[
    Order,
    Query(
        description="`asc`: oldest first (default); `desc`: newest first. Pass the same "
        "`order` with each `cursor` to keep paging the same way."
    ),
]
