"""Token mode: webhooks are the admin's alone — every route, each role, on both databases.

The dashboard role reads everything else but not webhooks: an endpoint's URL may carry a
credential, and its deliveries hold the events' data and the receivers' answers
(docs/security.md). A refused request answers 403 FORBIDDEN and changes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServiceFactory
from tests.databases import BACKENDS, data_settings, fresh_database
from tests.test_ownership import SECRET, Board, Cell


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request, tmp_path) as url:
        yield url


@pytest.fixture
async def board(database_url: str, start_service: ServiceFactory) -> AsyncIterator[Board]:
    service = await start_service(
        **data_settings(database_url),
        auth_mode="token",
        secret_key=SECRET,
        webhook_allow_private=True,
    )
    port = service.settings.api_port
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        yield Board(service, http)


def routes(hook: str, delivery: str) -> list[tuple[str, str, dict[str, object] | None]]:
    body = {"url": "http://127.0.0.1:9/x", "events": ["task.*"]}
    return [
        ("POST", "/api/webhooks", body),
        ("GET", "/api/webhooks", None),
        ("GET", f"/api/webhooks/{hook}", None),
        ("PATCH", f"/api/webhooks/{hook}", {"enabled": False}),
        ("POST", f"/api/webhooks/{hook}/rotate-secret", None),
        ("POST", f"/api/webhooks/{hook}/test", None),
        ("GET", f"/api/webhooks/{hook}/deliveries", None),
        ("POST", f"/api/webhooks/{hook}/deliveries/{delivery}/retry", None),
        ("DELETE", f"/api/webhooks/{hook}", None),
    ]


async def test_only_an_admin_touches_webhooks(board: Board) -> None:
    hook = await board.admin(
        "POST", "/api/webhooks", {"url": "http://127.0.0.1:9/x", "events": ["task.*"]}
    )
    queued = await board.admin("POST", f"/api/webhooks/{hook['id']}/test")
    before = await board.admin("GET", f"/api/webhooks/{hook['id']}")

    refused = [
        Cell(who, method, path, 403, body)
        for who in ("a", "dashboard")
        for method, path, body in routes(hook["id"], queued["id"])
    ]
    await board.check(refused)
    after = await board.admin("GET", f"/api/webhooks/{hook['id']}")
    # Nothing changed (failing_since moves: the test event's POST to port 9 fails meanwhile).
    kept = ("url", "events", "enabled", "previous_secret_expires_at", "updated_at")
    assert {k: after[k] for k in kept} == {k: before[k] for k in kept}
    listed = await board.admin("GET", "/api/webhooks")
    assert [item["id"] for item in listed["items"]] == [hook["id"]]

    # The admin may do every one of them (the last deletes the endpoint).
    allowed = {"POST": (201, 200, 202), "GET": (200,), "PATCH": (200,), "DELETE": (204,)}
    for method, path, body in routes(hook["id"], queued["id"]):
        if path.endswith("/test") or path.endswith("/retry"):
            await board.admin("PATCH", f"/api/webhooks/{hook['id']}", {"enabled": True})
        response = await board.call("admin", method, path, body)
        assert response.status_code in allowed[method], (method, path, response.text)
    assert (await board.call("admin", "GET", f"/api/webhooks/{hook['id']}")).status_code == 404
    # Without a token: 401 as everywhere.
    assert (await board.http.get("/api/webhooks")).status_code == 401
