"""The dashboard surface over HTTP (no browser): routes, config, headers, /api beside the pages."""

from __future__ import annotations

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app.cli import SERVE_COMMANDS
from app.server import SURFACES, Service
from tests.conftest import ServiceFactory


def http(service: Service) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{service.settings.dashboard_port}", timeout=10
    )


def test_serve_runs_the_dashboard_and_it_runs_alone() -> None:
    assert "dashboard" in SURFACES
    assert SERVE_COMMANDS["serve"] == ("api", "ws", "dashboard")
    assert SERVE_COMMANDS["dashboard"] == ("dashboard",)


async def test_pages_and_redirect(start_service: ServiceFactory) -> None:
    service = await start_service(surfaces=("dashboard",))
    async with http(service) as client:
        index = await client.get("/")
        assert index.status_code == 307 and index.headers["location"] == "/dashboard"
        for path, title in (("/dashboard", "Dashboard"), ("/live", "Live events")):
            page = await client.get(path)
            assert page.status_code == 200, path
            assert page.headers["content-type"].startswith("text/html")
            assert f"<title>{title} · context-manager</title>" in page.text
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "connect-src 'self' ws: wss:" in csp
            assert page.headers["cache-control"] == "no-cache"
        assert (await client.get("/nope")).status_code == 404


async def test_config_points_at_this_hosts_ports(start_service: ServiceFactory) -> None:
    service = await start_service(surfaces=("dashboard",), metrics_interval=2.5)
    settings = service.settings
    async with http(service) as client:
        config = (await client.get("/config.json")).json()
        assert config["wsUrl"] == f"ws://127.0.0.1:{settings.ws_port}/ws"
        assert config["apiBase"] == ""
        assert config["metricsInterval"] == 2.5
        module = await client.get("/config.js")
        assert module.headers["content-type"].startswith("text/javascript")
        assert module.text.startswith("export default Object.freeze({")
        assert f'"wsUrl":"ws://127.0.0.1:{settings.ws_port}/ws"' in module.text
        # The host the browser used, not the bind address: the page works under any name.
        named = await client.get("/config.json", headers={"Host": "localhost:1234"})
        assert named.json()["wsUrl"] == f"ws://localhost:{settings.ws_port}/ws"


async def test_config_honours_public_urls(start_service: ServiceFactory) -> None:
    service = await start_service(
        surfaces=("dashboard",),
        dashboard_ws_url="wss://example.test/realtime",
        dashboard_api_url="https://example.test",
    )
    async with http(service) as client:
        config = (await client.get("/config.json")).json()
    assert config["wsUrl"] == "wss://example.test/realtime"
    assert config["apiBase"] == "https://example.test"


async def test_static_modules_are_importable_from_any_origin(
    start_service: ServiceFactory,
) -> None:
    service = await start_service(surfaces=("dashboard",))
    async with http(service) as client:
        for name in ("client.js", "react-hooks.js", "dashboard.js", "live.js", "style.css"):
            response = await client.get(f"/static/{name}")
            assert response.status_code == 200, name
            assert response.headers["access-control-allow-origin"] == "*"
        client_js = await client.get("/static/client.js")
        assert "javascript" in client_js.headers["content-type"]
        # The bundle of clients/js: one ES module whose exports include the client.
        exports = client_js.text.rsplit("export {", 1)[-1]
        assert "RealtimeClient," in exports and "eventMatcher," in exports
        assert (await client.get("/static/../app.py")).status_code == 404
        assert (await client.get("/static/%2e%2e/app.py")).status_code == 404


async def test_api_is_served_beside_the_pages(start_service: ServiceFactory) -> None:
    """`context-manager dashboard` alone still answers /api/* from the same database."""
    service = await start_service(surfaces=("dashboard",))
    async with http(service) as client:
        created = await client.post("/api/tasks", json={"title": "via the dashboard port"})
        assert created.status_code == 201, created.text
        listed = (await client.get("/api/tasks")).json()
        assert [t["title"] for t in listed["items"]] == ["via the dashboard port"]
        metrics = (await client.get("/api/metrics")).json()
        assert {"active_agents", "tasks_by_status", "events_per_second"} <= metrics.keys()
        assert (await client.get("/api/tasks/nope")).status_code == 404
        # Only /api is forwarded: the API's docs stay on the API port.
        assert (await client.get("/docs")).status_code == 404
        health = (await client.get("/health")).json()
        assert health["status"] == "healthy" and health["type"] == "dashboard"
        assert health["port"] == service.settings.dashboard_port


async def test_no_websocket_on_the_dashboard_port(start_service: ServiceFactory) -> None:
    service = await start_service(surfaces=("dashboard",))
    with pytest.raises(InvalidStatus):
        async with connect(f"ws://127.0.0.1:{service.settings.dashboard_port}/ws", open_timeout=5):
            pass
