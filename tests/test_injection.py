"""SQL injection and path tricks in every id and filter: refused or harmless, nothing changed.

Every path id is checked against the id grammar (422 otherwise); every filter value is bound as
a parameter. The proof here: hostile values at each entry point, then the tables are intact and
a canary row is exactly as it was. Run on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from app.realtime.channels import is_valid_id
from tests.conftest import ClientFactory, ServiceFactory
from tests.databases import BACKENDS, data_settings, fresh_database

HOSTILE = [
    "' OR '1'='1",
    "x'; DROP TABLE tasks; --",
    '" OR ""="',
    "1; DELETE FROM events",
    "../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "%00",
    "a\x00b",
    "*",
    "%",
    "_",
    "task_1' UNION SELECT * FROM agents --",
    "\\",
    "$(reboot)",
    "ü" * 200,
]


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request, tmp_path) as url:
        yield url


async def test_hostile_ids_and_filters_change_nothing(
    database_url: str, start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(**data_settings(database_url), log_level="error")
    base = f"http://127.0.0.1:{service.settings.api_port}"
    async with httpx.AsyncClient(base_url=base) as http:
        canary = (await http.post("/api/tasks", json={"title": "canary", "agent_id": "a1"})).json()
        await http.post("/api/agents", json={"id": "a1", "name": "agent one"})
        await http.post(
            "/api/messages", json={"from_agent": "a1", "to_agent": "a2", "content": "hi"}
        )
        before = {
            path: (await http.get(path, params={"limit": 500})).json()["items"]
            for path in ("/api/tasks", "/api/agents", "/api/messages", "/api/sessions")
        }

        for value in HOSTILE:
            seg = quote(value, safe="")
            for method, path in [
                ("GET", f"/api/tasks/{seg}"),
                ("PATCH", f"/api/tasks/{seg}"),
                ("GET", f"/api/tasks/{seg}/subtasks"),
                ("PATCH", f"/api/subtasks/{seg}"),
                ("GET", f"/api/agents/{seg}"),
                ("POST", f"/api/agents/{seg}/heartbeat"),
                ("GET", f"/api/sessions/{seg}"),
                ("POST", f"/api/messages/{seg}/read"),
                ("GET", f"/api/channels/agents/{seg}/history"),
            ]:
                body = {"status": "failed"} if method == "PATCH" else None
                reply = await http.request(method, path, json=body)
                # A legal id (e.g. "_") names an empty channel: its history is an empty 200.
                allowed = (404, 405, 422) + ((200,) if is_valid_id(value) else ())
                assert reply.status_code in allowed, (method, path, reply.status_code)
            for path, name in [
                ("/api/tasks", "status"),
                ("/api/tasks", "agent_id"),
                ("/api/tasks", "session_id"),
                ("/api/messages", "to_agent"),
                ("/api/agents", "status"),
                ("/api/sessions", "status"),
                ("/api/tasks", "cursor"),
                ("/api/tasks", "order"),
            ]:
                reply = await http.get(path, params={name: value})
                assert reply.status_code in (200, 422), (path, name, value, reply.status_code)
                if reply.status_code == 200:
                    # A filter value is data, never SQL: it matches nothing.
                    assert reply.json()["items"] == [], (path, name, value)
            if is_valid_id(value):
                continue  # e.g. "_": a legal id, tried as a path and a filter above
            for body in (
                {"id": value, "title": "x"},
                {"title": "x", "agent_id": value},
                {"title": "x", "session_id": value},
            ):
                assert (await http.post("/api/tasks", json=body)).status_code == 422, body
            published = await http.post(
                "/api/events", json={"channel": f"agents/{value}", "event": "x.y", "data": {}}
            )
            assert published.status_code == 422

        after = {
            path: (await http.get(path, params={"limit": 500})).json()["items"] for path in before
        }
        assert after == before
        assert (await http.get(f"/api/tasks/{canary['id']}")).json() == canary

    # The WebSocket side takes the same ids: none of them is a channel or an identity.
    client = await ws_client(service)
    for value in HOSTILE:
        if is_valid_id(value):
            continue
        reply = await client.request({"type": "subscribe", "channel": f"agents/{value}", "id": 1})
        assert reply["code"] == "INVALID_CHANNEL"
