"""REST trust: tokens in token mode, roles, the events permission table, body size, CORS."""

from __future__ import annotations

import time

import httpx
import jwt

from app.core.security import Role, TokenCodec
from app.server import Service
from tests.conftest import ServiceFactory

SECRET = "k" * 64


def api(service: Service) -> str:
    return f"http://127.0.0.1:{service.settings.api_port}"


def bearer(service: Service, agent: str, role: Role = Role.AGENT) -> dict[str, str]:
    return {"Authorization": f"Bearer {TokenCodec(service.settings).create(agent, role=role)}"}


async def test_token_mode_requires_a_valid_token(start_service: ServiceFactory) -> None:
    service = await start_service(auth_mode="token", secret_key=SECRET)
    async with httpx.AsyncClient(base_url=api(service)) as http:
        missing = await http.get("/api/tasks")
        assert missing.status_code == 401 and missing.json()["code"] == "UNAUTHORIZED"
        assert missing.headers["www-authenticate"] == "Bearer"
        bad = await http.get("/api/tasks", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["code"] == "INVALID_TOKEN"
        assert "nope" not in bad.text
        expired = jwt.encode({"sub": "a", "exp": time.time() - 60}, SECRET, "HS256")
        old = await http.get("/api/tasks", headers={"Authorization": f"Bearer {expired}"})
        assert old.status_code == 401 and old.json()["code"] == "TOKEN_EXPIRED"
        ok = await http.get("/api/tasks", headers=bearer(service, "a1"))
        assert ok.status_code == 200
        # Health and the docs stay open.
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/openapi.json")).status_code == 200
        assert (await http.get("/docs")).status_code == 200


async def test_roles_over_rest(start_service: ServiceFactory) -> None:
    service = await start_service(auth_mode="token", secret_key=SECRET)
    async with httpx.AsyncClient(base_url=api(service)) as http:
        dashboard = bearer(service, "dash", Role.DASHBOARD)
        assert (await http.get("/api/tasks", headers=dashboard)).status_code == 200
        denied = await http.post("/api/tasks", json={"title": "x"}, headers=dashboard)
        assert denied.status_code == 403 and denied.json()["code"] == "FORBIDDEN"
        created = await http.post("/api/tasks", json={"title": "x"}, headers=bearer(service, "a1"))
        assert created.status_code == 201, created.text

        event = {"channel": "global", "event": "task.completed", "data": {}}
        agent_forge = await http.post("/api/events", json=event, headers=bearer(service, "a1"))
        assert agent_forge.status_code == 403
        admin = await http.post(
            "/api/events", json=event, headers=bearer(service, "root", Role.ADMIN)
        )
        assert admin.status_code == 200, admin.text
        direct = {"channel": "agents/a2", "event": "note.added", "data": {"hi": 1}}
        assert (
            await http.post("/api/events", json=direct, headers=bearer(service, "a1"))
        ).status_code == 200


async def test_open_mode_callers_act_as_the_server(service: Service) -> None:
    async with httpx.AsyncClient(base_url=api(service)) as http:
        event = {"channel": "global", "event": "deploy.finished", "data": {"ok": True}}
        assert (await http.post("/api/events", json=event)).status_code == 200


async def test_request_body_limit(start_service: ServiceFactory) -> None:
    service = await start_service(max_request_bytes=1024)
    async with httpx.AsyncClient(base_url=api(service)) as http:
        big = await http.post("/api/tasks", json={"title": "x", "description": "y" * 5000})
        assert big.status_code == 413 and big.json()["code"] == "PAYLOAD_TOO_LARGE"

        async def chunks():  # no Content-Length: the limit still holds
            for _ in range(10):
                yield b"z" * 500

        streamed = await http.post(
            "/api/tasks", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        assert (await http.get("/api/tasks")).status_code == 200


async def test_cors_allow_list(start_service: ServiceFactory) -> None:
    service = await start_service(allowed_origins=["http://good.example"])
    async with httpx.AsyncClient(base_url=api(service)) as http:
        preflight = {"Origin": "http://good.example", "Access-Control-Request-Method": "POST"}
        good = await http.options("/api/tasks", headers=preflight)
        assert good.headers.get("access-control-allow-origin") == "http://good.example"
        evil = await http.options(
            "/api/tasks", headers={**preflight, "Origin": "http://evil.example"}
        )
        assert "access-control-allow-origin" not in evil.headers
