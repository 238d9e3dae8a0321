"""`create_app(settings)`: the one application, its lifespan and its surfaces.

The application object is the REST API (port 3847, OpenAPI at /docs). Its `state.surfaces`
maps each port to the ASGI app that serves it:

    "api"  → this FastAPI app          (REST, /docs, /health with the database)
    "ws"   → WebSocketSurface          (WebSocket at / and /ws, /health, /stats)
    "dashboard" → DashboardSurface     (/dashboard, /live, the browser client; /api in-process)

All surfaces share what the lifespan builds: one database engine, one broker, one
ConnectionManager. `app.server.Service` runs the lifespan once and one uvicorn server per port.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from app import __version__
from app.api.auth import require_identity
from app.api.errors import install_error_handlers
from app.api.middleware import BodySizeLimit
from app.api.routes import (
    actions,
    agents,
    channels,
    events,
    health,
    index,
    messages,
    metrics,
    sessions,
    subtasks,
    tasks,
)
from app.core.config import Settings
from app.dashboard import DashboardSurface
from app.db.engine import create_engine, create_sessionmaker
from app.db.services import DataServices
from app.ops import OpsSurface
from app.realtime.broker import create_broker
from app.realtime.cluster import create_cluster
from app.realtime.http import WebSocketSurface
from app.realtime.manager import ConnectionManager

logger = logging.getLogger("context_manager")

DOCS_ASSETS = "/docs/assets"  # Swagger UI and ReDoc files, shipped by fastapi-offline


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Build and start what the surfaces share; stop it in reverse order."""
    settings: Settings = app.state.settings
    node_id = settings.node_id or f"node-{secrets.token_hex(4)}"
    engine = create_engine(settings.database_url)
    broker = create_broker(settings, node_id)
    cluster = create_cluster(settings, node_id)
    manager = ConnectionManager(settings, broker, node_id, cluster=cluster)
    app.state.node_id = node_id
    app.state.engine = engine
    app.state.sessionmaker = create_sessionmaker(engine)
    app.state.manager = manager
    data = DataServices(settings, engine, app.state.sessionmaker, manager)
    app.state.bridge = data.bridge
    app.state.agents = data.agents
    app.state.metrics = data.metrics
    await data.migrate()
    await manager.start()
    try:
        await data.start()
        app.state.started = True  # /readyz: start-up finished
        yield
    finally:
        app.state.started = False
        # Clients first (they may still be flushing), then the background machinery.
        if not manager.draining:
            await manager.drain()
        await data.stop()
        await manager.stop()
        await engine.dispose()


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
    routers = (sessions, agents, tasks, subtasks, messages, actions, events, metrics, channels)
    for module in routers:
        app.include_router(module.router, dependencies=[Depends(require_identity)])
    install_error_handlers(app)
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
