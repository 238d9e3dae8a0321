"""/livez and /readyz on every port (app/ops.py)."""

from __future__ import annotations

import httpx
import pytest

from app.server import Service
from tests.conftest import ServiceFactory

SURFACES = ("api", "ws", "dashboard")


def _port(service: Service, surface: str) -> int:
    settings = service.settings
    return {
        "api": settings.api_port,
        "ws": settings.ws_port,
        "dashboard": settings.dashboard_port,
    }[surface]


async def _get(service: Service, surface: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(f"http://127.0.0.1:{_port(service, surface)}{path}")


@pytest.fixture
async def all_ports(start_service: ServiceFactory) -> Service:
    return await start_service(surfaces=SURFACES)


@pytest.mark.parametrize("surface", SURFACES)
async def test_live_and_ready_on_every_port(all_ports: Service, surface: str) -> None:
    live = await _get(all_ports, surface, "/livez")
    assert live.status_code == 200 and live.json()["status"] == "alive"
    ready = await _get(all_ports, surface, "/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready"
    assert body["checks"] == {
        "started": True,
        "database": True,
        "broker": True,
        "not_draining": True,
    }
    assert ready.headers["cache-control"] == "no-store"


async def test_not_ready_while_draining(all_ports: Service) -> None:
    all_ports.manager.draining = True
    try:
        for surface in SURFACES:
            ready = await _get(all_ports, surface, "/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["not_draining"] is False
            # Alive all the same: a draining node must not be restarted by its supervisor.
            assert (await _get(all_ports, surface, "/livez")).status_code == 200
    finally:
        all_ports.manager.draining = False


async def test_not_ready_without_the_database(start_service: ServiceFactory) -> None:
    service = await start_service(surfaces=SURFACES)
    # Point the engine at a database server that is not there: the next check fails.
    from app.db.engine import create_engine
    from tests.conftest import free_port

    broken = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none")
    real = service.app.state.engine
    service.app.state.engine = broken
    service.app.state.readiness._database_checked = 0.0
    try:
        ready = await _get(service, "ws", "/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] is False
        assert ready.json()["checks"]["broker"] is True
    finally:
        service.app.state.engine = real
        service.app.state.readiness._database_checked = 0.0
        await broken.dispose()
    assert (await _get(service, "ws", "/readyz")).status_code == 200


async def test_not_ready_while_the_broker_is_down(
    start_service: ServiceFactory, redis_url: str
) -> None:
    import secrets

    from tests.conftest import free_port

    # A Redis URL where nothing listens: the node starts, alive but unready.
    dead = f"redis://127.0.0.1:{free_port()}/0"
    service = await start_service(
        surfaces=SURFACES, redis_url=dead, broker_prefix=f"t{secrets.token_hex(4)}"
    )
    for surface in SURFACES:
        assert (await _get(service, surface, "/livez")).status_code == 200
        ready = await _get(service, surface, "/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["broker"] is False
    health = await _get(service, "ws", "/health")
    assert health.json()["status"] == "degraded"


async def test_other_paths_still_reach_the_wrapped_app(all_ports: Service) -> None:
    assert (await _get(all_ports, "api", "/health")).json()["type"] == "api"
    assert (await _get(all_ports, "ws", "/health")).json()["type"] == "websocket"
    assert (await _get(all_ports, "dashboard", "/health")).json()["type"] == "dashboard"
