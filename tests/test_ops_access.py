"""Who reads the operations endpoints (app/ops_access.py): /stats, /metrics, /health's names.

Token mode: `/stats` (WebSocket port) and `/metrics` (every port) need a dashboard or admin
Bearer token, and `/health` on the WebSocket port keeps the seed's keys but counts channels by
kind unless such a token is presented. Open mode is the seed's: everything without a token.
The probes stay open in both.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from app.core.security import Role, TokenCodec
from app.server import Service
from tests.conftest import ClientFactory, ServiceFactory
from tests.test_cli_client import cli
from tests.test_health import SEED_HEALTH_KEYS

SECRET = "s" * 64
SURFACES = ("api", "ws", "dashboard")


@pytest.fixture
async def token_service(start_service: ServiceFactory) -> Service:
    return await start_service(surfaces=SURFACES, auth_mode="token", secret_key=SECRET)


def _token(service: Service, role: Role | None, **kwargs: Any) -> str:
    return TokenCodec(service.settings).create("ops", role=role or Role.AGENT, **kwargs)


def credentials(service: Service) -> dict[str, tuple[dict[str, str], int, str | None]]:
    """Each kind of caller: its headers, the status /stats and /metrics answer it, the code."""
    forged = TokenCodec(service.settings.model_copy(update={"secret_key": SecretStr("f" * 64)}))

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    return {
        "none": ({}, 401, "UNAUTHORIZED"),
        "not bearer": ({"Authorization": "Basic b3BzOm9wcw=="}, 401, "UNAUTHORIZED"),
        "agent": (bearer(_token(service, Role.AGENT)), 403, "FORBIDDEN"),
        "dashboard": (bearer(_token(service, Role.DASHBOARD)), 200, None),
        "admin": (bearer(_token(service, Role.ADMIN)), 200, None),
        "expired": (bearer(_token(service, Role.ADMIN, ttl=-60)), 401, "TOKEN_EXPIRED"),
        "bad signature": (bearer(forged.create("ops", role=Role.ADMIN)), 401, "INVALID_TOKEN"),
        "garbage": (bearer("not.a.jwt"), 401, "INVALID_TOKEN"),
    }


def ports(service: Service) -> dict[str, int]:
    settings = service.settings
    return {"api": settings.api_port, "ws": settings.ws_port, "dashboard": settings.dashboard_port}


def assert_refused(reply: httpx.Response, status: int, code: str | None) -> None:
    assert reply.status_code == status, (reply.status_code, reply.text)
    if status == 200:
        return
    assert reply.json()["code"] == code, reply.text
    assert isinstance(reply.json()["detail"], str)
    if status == 401:
        assert reply.headers["www-authenticate"] == "Bearer"


async def test_stats_and_metrics_need_a_dashboard_or_admin_token(token_service: Service) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        for who, (headers, status, code) in credentials(token_service).items():
            stats = await http.get(
                f"http://127.0.0.1:{token_service.settings.ws_port}/stats", headers=headers
            )
            assert_refused(stats, status, code)
            if status == 200:
                assert "connections" in stats.json(), who
            for surface, port in ports(token_service).items():
                metrics = await http.get(f"http://127.0.0.1:{port}/metrics", headers=headers)
                assert_refused(metrics, status, code)
                if status == 200:
                    assert "cm_connections " in metrics.text, (who, surface)
                    assert metrics.headers["content-type"].startswith("text/plain")


async def test_probes_stay_open_in_token_mode(token_service: Service) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        for port in ports(token_service).values():
            assert (await http.get(f"http://127.0.0.1:{port}/livez")).status_code == 200
            assert (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
            assert (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200


async def test_health_names_channels_only_to_operators(
    token_service: Service, ws_client: ClientFactory
) -> None:
    service = token_service
    secret_agent = await ws_client(
        service, token=TokenCodec(service.settings).create("secret-agent-7", session_id="s-9")
    )
    for channel in ("agents/secret-agent-7", "sessions/s-9", "global", "topics/plans"):
        assert (await secret_agent.subscribe(channel))["success"], channel
    watcher = await ws_client(service, token=_token(service, Role.DASHBOARD))
    assert (await watcher.subscribe("global"))["success"]
    named = {"agents/secret-agent-7": 1, "sessions/s-9": 1, "global": 2, "topics/plans": 1}
    kinds = {"agents": 1, "sessions": 1, "global": 2, "topics": 1}

    url = f"http://127.0.0.1:{service.settings.ws_port}/health"
    async with httpx.AsyncClient(timeout=10) as http:
        for who, (headers, status, _code) in credentials(service).items():
            reply = await http.get(url, headers=headers)
            assert reply.status_code == 200, (who, reply.text)
            body = reply.json()
            assert set(body) == SEED_HEALTH_KEYS, who
            assert body["connectedClients"] == 2 and body["activeChannels"] == 4, (who, body)
            if status == 200:  # dashboard and admin
                assert body["channelStats"] == named, who
            else:
                assert body["channelStats"] == kinds, who
                assert "secret-agent-7" not in reply.text and "s-9" not in reply.text, who


async def test_open_mode_serves_everything_without_a_token(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(surfaces=SURFACES)
    client = await ws_client(service, agent_id="secret-agent-7")
    await client.subscribe("agents/secret-agent-7")
    async with httpx.AsyncClient(timeout=10) as http:
        health = (await http.get(f"http://127.0.0.1:{service.settings.ws_port}/health")).json()
        assert health["channelStats"] == {"agents/secret-agent-7": 1}
        stats = await http.get(f"http://127.0.0.1:{service.settings.ws_port}/stats")
        assert stats.status_code == 200
        assert stats.json()["channels"]["subscribers"] == {"agents/secret-agent-7": 1}
        for port in ports(service).values():
            assert (await http.get(f"http://127.0.0.1:{port}/metrics")).status_code == 200


async def test_cli_status_reads_stats_with_a_dashboard_token(token_service: Service) -> None:
    s = token_service.settings
    args = ["status", "--json", "--ws-port", str(s.ws_port), "--api-port", str(s.api_port)]
    args += ["--dashboard-port", str(s.dashboard_port)]
    _, out, _ = await cli(*args)
    assert json.loads(out)["stats"] == {"error": "HTTP 401"}
    _, out, _ = await cli(*args, "--token", _token(token_service, Role.DASHBOARD))
    document = json.loads(out)
    assert document["stats"]["node_id"] == token_service.manager.node_id
    assert document["websocket"]["channelStats"] == {}
