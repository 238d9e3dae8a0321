"""List endpoints run either way: `order=asc` (oldest first, the default) or `order=desc`
(newest first, what the dashboard asks for), and the cursor pages on in the order asked."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServiceFactory
from tests.databases import BACKENDS, api, data_settings, fresh_database
from tests.test_bridge import execute_raw

COUNT = 7


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request, tmp_path) as url:
        yield url


async def walk(
    http: httpx.AsyncClient, path: str, limit: int, **params: Any
) -> tuple[list[str], int]:
    """Every id of a list, following next_cursor; and how many pages it took."""
    ids: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = {"limit": limit, **params, **({"cursor": cursor} if cursor else {})}
        response = await http.get(path, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        ids += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return ids, pages
        assert pages <= 50


async def _tasks(http: httpx.AsyncClient) -> str:
    for i in range(COUNT):
        assert (await http.post("/api/tasks", json={"title": f"t{i}"})).status_code == 201
    return "/api/tasks"


async def _agents(http: httpx.AsyncClient) -> str:
    for i in range(COUNT):
        assert (await http.post("/api/agents", json={"id": f"agent-{i}"})).status_code == 201
    return "/api/agents"


async def _sessions(http: httpx.AsyncClient) -> str:
    for _ in range(COUNT):
        assert (await http.post("/api/sessions", json={})).status_code == 201
    return "/api/sessions"


async def _messages(http: httpx.AsyncClient) -> str:
    for i in range(COUNT):
        body = {"from_agent": "a", "to_agent": "b", "content": str(i)}
        assert (await http.post("/api/messages", json=body)).status_code == 201
    return "/api/messages"


async def _subtasks(http: httpx.AsyncClient) -> str:
    task = (await http.post("/api/tasks", json={"title": "parent"})).json()
    for i in range(COUNT):
        response = await http.post(f"/api/tasks/{task['id']}/subtasks", json={"title": f"s{i}"})
        assert response.status_code == 201
    return f"/api/tasks/{task['id']}/subtasks"


LISTS: dict[str, Callable[[httpx.AsyncClient], Awaitable[str]]] = {
    "tasks": _tasks,
    "agents": _agents,
    "sessions": _sessions,
    "messages": _messages,
    "subtasks": _subtasks,
}


@pytest.mark.parametrize("kind", list(LISTS))
async def test_every_list_runs_both_ways(
    kind: str, database_url: str, start_service: ServiceFactory
) -> None:
    service = await start_service(**data_settings(database_url))
    async with api(service) as http:
        path = await LISTS[kind](http)
        oldest_first = (await http.get(path, params={"limit": 500})).json()["items"]
        assert len(oldest_first) == COUNT
        ids = [item["id"] for item in oldest_first]
        stamps = [item.get("created_at") or item["started_at"] for item in oldest_first]
        assert stamps == sorted(stamps)

        assert (await walk(http, path, 3))[0] == ids
        assert (await walk(http, path, 3, order="asc"))[0] == ids
        newest_first, pages = await walk(http, path, 3, order="desc")
        assert newest_first == ids[::-1] and pages == 3
        first_page = (await http.get(path, params={"limit": 2, "order": "desc"})).json()
        assert [item["id"] for item in first_page["items"]] == ids[::-1][:2]

        bad = await http.get(path, params={"order": "sideways"})
        assert bad.status_code == 422


async def test_ties_on_the_timestamp_are_ordered_by_id_both_ways(
    database_url: str, start_service: ServiceFactory
) -> None:
    """Rows written in one statement share created_at: the id breaks the tie, and a page
    boundary inside the tie loses nothing and repeats nothing, either way."""
    service = await start_service(**data_settings(database_url))
    values = ", ".join(f"('tie-{c}', 'raw', 'same')" for c in "cadbe")
    await execute_raw(database_url, f"INSERT INTO tasks (id, title, session_id) VALUES {values}")
    async with api(service) as http:
        asc, _ = await walk(http, "/api/tasks", 2, session_id="same")
        desc, _ = await walk(http, "/api/tasks", 2, session_id="same", order="desc")
        # One by one across the tie: the cursor carries the id.
        single, pages = await walk(http, "/api/tasks", 1, session_id="same", order="desc")
    expected = [f"tie-{c}" for c in "abcde"]
    assert asc == expected and desc == expected[::-1] and single == desc and pages == 5


async def test_filters_and_order_together(database_url: str, start_service: ServiceFactory) -> None:
    service = await start_service(**data_settings(database_url))
    async with api(service) as http:
        ids = []
        for i in range(6):
            body = {"title": f"t{i}", "agent_id": "coder" if i % 2 else "other"}
            ids.append((await http.post("/api/tasks", json=body)).json()["id"])
        await http.patch(f"/api/tasks/{ids[3]}", json={"status": "completed"})
        coder_desc, _ = await walk(http, "/api/tasks", 1, agent_id="coder", order="desc")
        assert coder_desc == [ids[5], ids[3], ids[1]]
        pending_desc, _ = await walk(http, "/api/tasks", 2, status="pending", order="desc")
        assert pending_desc == [ids[5], ids[4], ids[2], ids[1], ids[0]]


async def test_order_is_in_the_openapi_document(
    database_url: str, start_service: ServiceFactory
) -> None:
    service = await start_service(**data_settings(database_url))
    async with api(service) as http:
        document = (await http.get("/openapi.json")).json()
    paths = [
        "/api/tasks",
        "/api/agents",
        "/api/sessions",
        "/api/messages",
        "/api/tasks/{task_id}/subtasks",
    ]
    for path in paths:
        parameters = {p["name"]: p for p in document["paths"][path]["get"]["parameters"]}
        order = parameters["order"]
        schema = order["schema"]
        if "$ref" in schema:
            schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        assert schema.get("enum") == ["asc", "desc"], path
        assert order["schema"].get("default", "asc") == "asc"
        assert "newest first" in order["description"]
