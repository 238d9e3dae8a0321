"""`create_app(settings)`: the one application, its lifespan and its surfaces.

The application object is the REST API (port 3847, OpenAPI at /docs). Its `state.surfaces`
maps each port to the ASGI app that serves it:

    "api"  → this FastAPI app          (REST, /docs, /health with the database; MCP at /mcp)
    "ws"   → WebSocketSurface          (WebSocket at / and /ws, /health, /stats)
    "dashboard" → DashboardSurface     (/dashboard, /live, the browser client; /api in-process)

All surfaces share what the lifespan builds: one database engine, one broker, one
ConnectionManager. `app.server.Service` runs the lifespan once and one uvicorn server per port.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from app import __version__
from app.api.auth import require_identity
from app.api.errors import install_error_handlers
from app.api.fast_path import FastPath
from app.api.idempotency import Idempotency
from app.api.middleware import BodySizeLimit, ContextScope
from app.api.routes import (
    actions,
    agents,
    channels,
    events,
    health,
    inbox,
    index,
    messages,
    metrics,
    reservations,
    sessions,
    subtasks,
    tasks,
    webhooks,
)
from app.core.config import Settings
from app.dashboard import DashboardSurface
from app.mcp.server import McpSurface
from app.ops import OpsSurface
from app.realtime.http import WebSocketSurface
from app.runtime import Runtime

logger = logging.getLogger("context_manager")

DOCS_ASSETS = "/docs/assets"  # Swagger UI and ReDoc files, shipped by fastapi-offline

# The /api routers in the order agents call them most. FastAPI tries each included router's
# routes in turn (twice for the one that matches), ≈ 3 µs a route; the task and message writes
# came after three other routers' ten routes (65-135 µs to route one; docs/performance.md,
# sixth pass). The order changes no answer: no path and method is served by two of them
# (tests/test_routing.py).
API_ROUTERS = (
    tasks,
    messages,
    inbox,
    agents,
    subtasks,
    sessions,
    reservations,
    actions,
    events,
    metrics,
    channels,
    webhooks,
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Build and start what the surfaces share (app/runtime.py); stop it in reverse order."""
    runtime = Runtime(app.state.settings)
    app.state.runtime = runtime
    # The parts by name, for the routes' dependencies, the probes and the tests.
    app.state.node_id = runtime.node_id
    app.state.engine = runtime.engine
    app.state.sessionmaker = runtime.sessionmaker
    app.state.manager = runtime.manager
    app.state.bridge = runtime.bridge
    app.state.agents = runtime.agents
    app.state.metrics = runtime.metrics
    try:
        await runtime.start()
        async with app.state.mcp.running():  # the MCP SDK's session manager (app/mcp/)
            app.state.started = True  # /readyz: start-up finished
            yield
    finally:
        app.state.started = False
        await runtime.stop()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application for `settings` (read from the environment when omitted)."""
    settings = settings or Settings()
    # /docs (Swagger UI) and /redoc load their scripts and styles from this app (DOCS_ASSETS),
    # not from a CDN: they render on a machine without internet access too.
    app = FastAPIOffline(
        title="context-manager",
        version=__version__,
        description="Real-time coordination for teams of AI agents: REST API.",
        lifespan=lifespan,
        static_url=DOCS_ASSETS,
    )
    app.state.settings = settings
    app.include_router(health.router)
    app.include_router(index.router)  # GET /api: open, like /docs and /openapi.json
    # Every /api route knows its caller (open mode: the server; token mode: 401 without one).
    for module in API_ROUTERS:
        app.include_router(module.router, dependencies=[Depends(require_identity)])
    # MCP (Streamable HTTP) at /mcp: the SDK authenticates it itself (app/mcp/server.py).
    app.state.mcp = McpSurface(settings, lambda: app.state.runtime)
    for path in app.state.mcp.paths:
        app.add_route(path, app.state.mcp, include_in_schema=False)
    install_error_handlers(app)
    # Outermost last: the body limit, then CORS, then idempotency (it reads bounded bodies),
    # then the scope that closes the routes' domain contexts (app/api/deps.py: get_context),
    # then the fast path, which runs the common routes without FastAPI's request machinery
    # and hands the rest, or any request it cannot take as it is, to FastAPI's router.
    if settings.rest_fast_path:
        app.add_middleware(FastPath, root=app)
    app.add_middleware(ContextScope)
    app.add_middleware(Idempotency, root=app)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.allowed_origins or ["*"],
        allow_methods=["*"],
        allow_headers=["*"],
    )
    app.add_middleware(BodySizeLimit, limit=settings.max_request_bytes)
    surfaces: dict[str, Any] = {
        "api": app,
        "ws": WebSocketSurface(app),
        "dashboard": DashboardSurface(app),
    }
    # /livez, /readyz and /metrics on every port; REST requests timed on the API's (app/ops.py).
    surfaces = {
        name: OpsSurface(app, inner, name, timed=name == "api") for name, inner in surfaces.items()
    }
    app.state.surfaces = surfaces
    return app
