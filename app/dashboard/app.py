"""The dashboard surface (port 3848): static pages, their runtime config, and the API beside them.

Routes::

    /                 → 307 to /dashboard
    /dashboard        KPI cards, chart, agents, tasks          (static/dashboard.html)
    /live             the real-time event stream               (static/live.html)
    /webhooks         endpoints, last deliveries, retry        (static/webhooks.html)
    /config.js        `export default {...}`: where the WebSocket server and the API are
    /config.json      the same object as JSON (for other tools)
    /static/…         CSS, JS modules (client.js, react-hooks.js), icons
    /health           {"status": "healthy", "type": "dashboard", …}
    /api/…            the REST API, served in-process by the root application

Why /api is served here too: the page then reads the REST API from its own origin, so it
works without CORS and behind one reverse-proxy prefix. The WebSocket server is reached on
its own port (or DASHBOARD_WS_URL); WebSockets are not subject to CORS.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from app import __version__
from app.core.config import Settings

STATIC_DIR = Path(__file__).parent / "static"

# The pages load only their own scripts and styles; they talk to the API (same origin) and
# to the WebSocket server (any ws:/wss: origin, since its port differs).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _host_for_url(request: Request, fallback: str) -> str:
    """The host name the browser used, fit to build a URL to another port of this machine."""
    host = request.url.hostname or fallback
    if host in {"0.0.0.0", "::", ""}:
        host = "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def client_config(settings: Settings, request: Request) -> dict[str, Any]:
    """What the pages need to know: the WebSocket URL, the API base, the metrics interval."""
    host = _host_for_url(request, settings.host)
    secure = request.url.scheme == "https"
    ws_url = settings.dashboard_ws_url or (
        f"{'wss' if secure else 'ws'}://{host}:{settings.ws_port}/ws"
    )
    return {
        "version": __version__,
        "wsUrl": ws_url,
        # Same origin: /api on this port is the REST API (see the module docstring).
        "apiBase": settings.dashboard_api_url or "",
        "metricsInterval": settings.metrics_interval,
    }


class DashboardSurface:
    """ASGI app of port 3848: /api/* to the root application, everything else to the pages."""

    def __init__(self, root: FastAPI) -> None:
        self.root = root
        self.pages = self._build_pages()

    def _settings(self) -> Settings:
        settings: Settings = self.root.state.settings
        return settings

    def _build_pages(self) -> Starlette:
        async def index(request: Request) -> Response:
            return RedirectResponse("/dashboard", status_code=307)

        def page(name: str) -> Any:
            async def endpoint(request: Request) -> Response:
                return FileResponse(STATIC_DIR / name, headers=PAGE_HEADERS)

            return endpoint

        async def config_js(request: Request) -> Response:
            body = orjson.dumps(client_config(self._settings(), request)).decode()
            return Response(
                f"export default Object.freeze({body});\n",
                media_type="text/javascript",
                headers={"Cache-Control": "no-store"},
            )

        async def config_json(request: Request) -> Response:
            return JSONResponse(
                client_config(self._settings(), request), headers={"Cache-Control": "no-store"}
            )

        async def health(request: Request) -> Response:
            port = request.scope.get("server", ("", self._settings().dashboard_port))[1]
            return JSONResponse(
                {
                    "status": "healthy",
                    "type": "dashboard",
                    "port": port,
                    "timestamp": datetime.now(UTC)
                    .isoformat(timespec="milliseconds")
                    .replace("+00:00", "Z"),
                }
            )

        return Starlette(
            routes=[
                Route("/", index),
                Route("/dashboard", page("dashboard.html")),
                Route("/live", page("live.html")),
                Route("/webhooks", page("webhooks.html")),
                Route("/config.js", config_js),
                Route("/config.json", config_json),
                Route("/health", health),
                Mount("/static", app=_PublicStatic(directory=STATIC_DIR), name="static"),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            scope["path"] == "/api" or scope["path"].startswith("/api/")
        ):
            await self.root(scope, receive, send)
            return
        if scope["type"] == "websocket":
            # The WebSocket server has its own port; refuse rather than hang.
            await receive()
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.pages(scope, receive, send)


class _PublicStatic(StaticFiles):
    """Static files any origin may load: client.js is meant to be imported by other web apps."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault("Cache-Control", "no-cache")
        return response
