"""Operations endpoints on every port: /livez, /readyz and /metrics (beside the seed's /health).

`OpsSurface` wraps the ASGI app of one port. It answers those three paths itself and passes
everything else through untouched: WebSocket handshakes go straight on, so nothing here sits
on the WebSocket hot path. On the API port it also times HTTP requests (observability.py).

    /livez    200 while the process serves requests: a load balancer restarts it otherwise
    /readyz   200 when the node should get traffic: start-up finished, database reachable,
              broker connected, not draining; 503 with the failing checks otherwise
    /metrics  Prometheus text format (observability.py); in token mode only with a dashboard
              or admin Bearer token (401/403 otherwise, as the REST API answers: ops_access.py)

The probes stay open in every mode: balancers and orchestrators probe without credentials,
and they say nothing about channels, agents or traffic.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any, cast

import orjson
from fastapi import FastAPI

from app.db.engine import ping
from app.observability import HttpMetrics, render_metrics
from app.ops_access import OperatorAccess
from app.realtime.endpoint import Receive, Send
from app.realtime.http import asgi3_entry

# A database check is reused for this long: probes from several ports and balancers at once
# must not turn into a query each.
DATABASE_CHECK_TTL = 1.0
DATABASE_CHECK_TIMEOUT = 1.0


async def _json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    payload = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"cache-control", b"no-store"),
                *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class Readiness:
    """The checks behind /readyz, shared by every port of the process."""

    def __init__(self, root: FastAPI) -> None:
        self.root = root
        self._database_checked = 0.0
        self._database_ok = False

    async def database(self) -> bool:
        now = time.monotonic()
        if now - self._database_checked > DATABASE_CHECK_TTL:
            engine = getattr(self.root.state, "engine", None)
            self._database_ok = engine is not None and await ping(engine, DATABASE_CHECK_TIMEOUT)
            self._database_checked = time.monotonic()
        return self._database_ok

    async def checks(self) -> dict[str, bool]:
        state = self.root.state
        manager = getattr(state, "manager", None)
        started = bool(getattr(state, "started", False))
        return {
            "started": started,
            "database": started and await self.database(),
            "broker": manager is not None and manager.broker.healthy,
            "not_draining": manager is not None and not manager.draining,
        }


class OpsSurface:
    """ASGI wrapper of one port's app (see the module docstring)."""

    def __init__(self, root: FastAPI, inner: Any, name: str, timed: bool = False) -> None:
        self.root = root
        self.inner = inner
        self.name = name
        readiness = getattr(root.state, "readiness", None)
        if readiness is None:
            readiness = root.state.readiness = Readiness(root)
        self.readiness: Readiness = readiness
        self.http_metrics: HttpMetrics | None = HttpMetrics.of(root) if timed else None
        self.access = OperatorAccess(root.state.settings)

    @asgi3_entry
    def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> Awaitable[None]:
        # Anything but HTTP goes straight through: no wrapper frame per WebSocket connection.
        if scope["type"] != "http":
            return cast(Awaitable[None], self.inner(scope, receive, send))
        return self._http(scope, receive, send)

    async def _http(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == "/livez":
                await _json(send, 200, {"status": "alive", "surface": self.name})
                return
            if path == "/readyz":
                checks = await self.readiness.checks()
                ready = all(checks.values())
                body = {"status": "ready" if ready else "unready", "checks": checks}
                await _json(send, 200 if ready else 503, body)
                return
            if path == "/metrics":
                refusal = self.access.refusal(_header(scope, b"authorization"))
                if refusal is not None:
                    await _json(send, refusal.status, refusal.body(), refusal.headers())
                    return
                payload, content_type = await render_metrics(self.root)
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-type", content_type.encode()),
                            (b"content-length", str(len(payload)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": payload})
                return
            if self.http_metrics is not None:
                await self.http_metrics.observe(self.inner, scope, receive, send)
                return
        await self.inner(scope, receive, send)

    # Attribute access falls through to the wrapped app (tests and tools reach `.state`).
    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
