"""REST: tasks and subtasks — every endpoint and error, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import ServiceFactory
from tests.databases import BACKENDS, api, data_settings, fresh_database


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request, tmp_path) as url:
        yield url


async def test_task_lifecycle_and_errors(database_url: str, start_service: ServiceFactory) -> None:
    service = await start_service(**data_settings(database_url))
    async with api(service) as http:
        created = await http.post(
            "/api/tasks",
            json={
                "title": "Add login",
                "description": "JWT",
                "session_id": "s1",
                "agent_id": "coder",
                "priority": 3,
                "payload": {"ticket": "APP-1"},
            },
        )
        assert created.status_code == 201, created.text
        task = created.json()
        assert task["id"].startswith("task_") and len(task["id"]) == 37
        assert task["status"] == "pending" and task["payload"] == {"ticket": "APP-1"}
        assert task["created_at"].endswith("Z")

        assert (await http.get(f"/api/tasks/{task['id']}")).json() == task
        missing = await http.get("/api/tasks/task_nope")
        assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"

        # Client-chosen id, and its reuse.
        mine = await http.post("/api/tasks", json={"id": "t-42", "title": "mine"})
        assert mine.status_code == 201 and mine.json()["id"] == "t-42"
        again = await http.post("/api/tasks", json={"id": "t-42", "title": "again"})
        assert again.status_code == 409 and again.json()["code"] == "ALREADY_EXISTS"

        # Bad input.
        for body in (
            {},
            {"title": ""},
            {"title": "x", "priority": "high"},
            {"title": "x", "agent_id": "no spaces"},
            {"title": "x", "unknown": 1},
            {"title": "nul\u0000byte"},
        ):
            response = await http.post("/api/tasks", json=body)
            assert response.status_code == 422, (body, response.text)
        assert (
            await http.patch(f"/api/tasks/{task['id']}", json={"status": "done"})
        ).status_code == 422

        # Lifecycle: pending → in_progress → completed; timestamps follow.
        started = (
            await http.patch(f"/api/tasks/{task['id']}", json={"status": "in_progress"})
        ).json()
        assert started["status"] == "in_progress" and started["started_at"] is not None
        done = await http.patch(
            f"/api/tasks/{task['id']}", json={"status": "completed", "result": {"pr": 7}}
        )
        assert done.status_code == 200
        assert done.json()["completed_at"] is not None and done.json()["result"] == {"pr": 7}

        # A finished task never changes again: not back to pending, not even its title.
        back = await http.patch(f"/api/tasks/{task['id']}", json={"status": "pending"})
        assert back.status_code == 409 and back.json()["code"] == "ILLEGAL_TRANSITION"
        assert "completed" in back.json()["detail"] and "pending" in back.json()["detail"]
        retitle = await http.patch(f"/api/tasks/{task['id']}", json={"title": "other"})
        assert retitle.status_code == 409 and retitle.json()["code"] == "FINISHED"
        # Re-stating what it already is changes nothing and is fine.
        same = await http.patch(f"/api/tasks/{task['id']}", json={"status": "completed"})
        assert same.status_code == 200 and same.json() == done.json()
        assert (await http.patch("/api/tasks/none", json={"status": "failed"})).status_code == 404

        for terminal in ("failed", "cancelled"):
            other = (await http.post("/api/tasks", json={"title": terminal})).json()
            moved = await http.patch(f"/api/tasks/{other['id']}", json={"status": terminal})
            assert moved.json()["status"] == terminal
            for status in ("pending", "in_progress", "completed"):
                refused = await http.patch(f"/api/tasks/{other['id']}", json={"status": status})
                assert refused.status_code == 409


async def test_task_filters_and_pagination(
    database_url: str, start_service: ServiceFactory
) -> None:
    service = await start_service(**data_settings(database_url))
    async with api(service) as http:
        ids = []
        for i in range(7):
            body = {
                "title": f"t{i}",
                "agent_id": "a" if i % 2 else "b",
                "session_id": "s1" if i < 4 else "s2",
            }
            ids.append((await http.post("/api/tasks", json=body)).json()["id"])
        await http.patch(f"/api/tasks/{ids[0]}", json={"status": "failed"})

        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, str | int] = {"limit": 3}
            if cursor:
                params["cursor"] = cursor
            page = (await http.get("/api/tasks", params=params)).json()
            seen += [t["id"] for t in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == ids  # oldest first, every task once

        def titles(response_json: dict[str, list[dict[str, str]]]) -> list[str]:
            return [t["title"] for t in response_json["items"]]

        assert titles((await http.get("/api/tasks", params={"agent_id": "a"})).json()) == [
            "t1",
            "t3",
            "t5",
        ]
        assert titles((await http.get("/api/tasks", params={"session_id": "s2"})).json()) == [
            "t4",
            "t5",
            "t6",
        ]
        assert titles((await http.get("/api/tasks", params={"status": "failed"})).json()) == ["t0"]
        both = await http.get("/api/tasks", params={"status": "pending", "agent_id": "b"})
        assert titles(both.json()) == ["t2", "t4", "t6"]

        for params in ({"limit": 0}, {"limit": 501}, {"status": "nope"}, {"cursor": "garbage!"}):
            response = await http.get("/api/tasks", params=params)
            assert response.status_code == 422, (params, response.text)
        assert (await http.get("/api/tasks", params={"cursor": "garbage!"})).json()[
            "code"
        ] == "INVALID_CURSOR"


async def test_subtasks(database_url: str, start_service: ServiceFactory) -> None:
    service = await start_service(**data_settings(database_url))
    async with api(service) as http:
        task = (await http.post("/api/tasks", json={"title": "parent"})).json()
        first = await http.post(f"/api/tasks/{task['id']}/subtasks", json={"title": "one"})
        assert first.status_code == 201
        sub = first.json()
        assert sub["task_id"] == task["id"] and sub["id"].startswith("subtask_")
        await http.post(f"/api/tasks/{task['id']}/subtasks", json={"title": "two"})
        listed = (await http.get(f"/api/tasks/{task['id']}/subtasks")).json()
        assert [s["title"] for s in listed["items"]] == ["one", "two"]

        assert (await http.post("/api/tasks/none/subtasks", json={"title": "x"})).status_code == 404
        assert (await http.get("/api/tasks/none/subtasks")).status_code == 404
        assert (
            await http.post(f"/api/tasks/{task['id']}/subtasks", json={"title": ""})
        ).status_code == 422

        done = await http.patch(f"/api/subtasks/{sub['id']}", json={"status": "completed"})
        assert done.status_code == 200 and done.json()["status"] == "completed"
        back = await http.patch(f"/api/subtasks/{sub['id']}", json={"status": "in_progress"})
        assert back.status_code == 409 and back.json()["code"] == "ILLEGAL_TRANSITION"
        assert (
            await http.patch("/api/subtasks/none", json={"status": "failed"})
        ).status_code == 404
        dup = await http.post(
            f"/api/tasks/{task['id']}/subtasks", json={"id": sub["id"], "title": "dup"}
        )
        assert dup.status_code == 409
