"""The WebSocket server's own HTTP routes and its ASGI surface (port 3849).

`WebSocketSurface` sends WebSocket handshakes on `/` and `/ws` straight to the endpoint, and
every HTTP request to a small FastAPI app with the seed's `/health` and `/stats`, and
`/asyncapi.yaml`, the protocol's AsyncAPI document (app/realtime/asyncapi.py).

In token mode `/stats` needs a dashboard or admin token, and `/health` names channels only to
such a token; to anyone else its `channelStats` counts subscribers by channel kind
(app/ops_access.py).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from app.ops_access import OperatorAccess, by_kind
from app.realtime import asyncapi
from app.realtime.endpoint import Receive, Send, websocket_endpoint
from app.realtime.manager import ConnectionManager
from app.realtime.protocol import CloseCode

WEBSOCKET_PATHS = frozenset({"/", "/ws"})

F = TypeVar("F", bound=Callable[..., Awaitable[None]])


def asgi3_entry(method: F) -> F:
    """Mark a plain `__call__` that returns the next app's coroutine as an ASGI 3 entry.

    An `async def` wrapper would keep one more coroutine frame alive for the whole life of
    every WebSocket connection; returning the inner coroutine keeps none. The mark is what
    servers' ASGI 2/3 auto-detection (uvicorn, Starlette's TestClient) looks for.
    """
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:  # Python 3.12+
        return cast(F, mark(method))
    method._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]
    return method


def _manager(request: Request) -> ConnectionManager:
    manager: ConnectionManager = request.app.state.root.state.manager
    return manager


def build_http_app(root: FastAPI) -> FastAPI:
    """HTTP routes of the WebSocket port; state is read from the root app at request time."""
    http = FastAPI(
        title="context-manager WebSocket server",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    http.state.root = root
    access = OperatorAccess(root.state.settings)

    @http.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        """The seed's health check: clients, channels, subscribers per channel."""
        port = request.scope.get("server", ("", root.state.settings.ws_port))[1]
        body = _manager(request).health(port)
        if access.refusal(request.headers.get("authorization")) is not None:
            body["channelStats"] = by_kind(body["channelStats"])
        return body

    @http.get("/stats", response_model=None)
    async def stats(request: Request) -> dict[str, Any] | JSONResponse:
        """Counters since start: connections, subscriptions, messages, errors, rates."""
        refusal = access.refusal(request.headers.get("authorization"))
        if refusal is not None:
            return JSONResponse(refusal.body(), refusal.status, refusal.headers())
        return _manager(request).snapshot()

    @http.get("/asyncapi.yaml", response_class=Response)
    async def asyncapi_document() -> Response:
        """The protocol as an AsyncAPI 3.1 document (what docs/asyncapi.yaml holds)."""
        return Response(
            asyncapi.render(),
            media_type="application/yaml",
            headers={"Access-Control-Allow-Origin": "*", "Cache-Control": "no-cache"},
        )

    return http


class WebSocketSurface:
    """ASGI app of port 3849."""

    def __init__(self, root: FastAPI) -> None:
        self.root = root
        self.http = build_http_app(root)

    @asgi3_entry
    def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] == "websocket" and scope["path"] in WEBSOCKET_PATHS:
            return websocket_endpoint(self.root.state.manager, scope, receive, send)
        return self._other(scope, receive, send)

    async def _other(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await receive()
            await send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION})
        elif kind == "http":
            await self.http(scope, receive, send)  # type: ignore[arg-type]
        elif kind == "lifespan":
            # Served alone by another ASGI server, the surface runs the application's lifespan
            # (Service runs it itself and starts uvicorn with lifespan="off").
            await self.root(scope, receive, send)  # type: ignore[arg-type]
