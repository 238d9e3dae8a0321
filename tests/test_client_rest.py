"""The Python REST client (app.client.rest) against a real API."""

from __future__ import annotations

import asyncio

import pytest

from app.client import ApiError, RealtimeClient, RestClient
from app.server import Service
from tests.conftest import ServiceFactory


def rest(service: Service, **options: object) -> RestClient:
    return RestClient(f"http://127.0.0.1:{service.settings.api_port}", **options)  # type: ignore[arg-type]


async def test_tasks_and_subtasks_lifecycle(start_service: ServiceFactory) -> None:
    service = await start_service(surfaces=("api",))
    async with rest(service) as api:
        session = await api.create_session(id="release-1", name="Release 1")
        assert session["status"] == "active"
        task = await api.create_task(
            "Add login", session_id="release-1", agent_id="backend", priority=2, payload={"k": 1}
        )
        assert (task["title"], task["status"], task["priority"]) == ("Add login", "pending", 2)
        assert (await api.get_task(task["id"]))["payload"] == {"k": 1}

        sub = await api.create_subtask(task["id"], "Write the migration", agent_id="db")
        assert sub["task_id"] == task["id"]
        sub = await api.update_subtask(sub["id"], status="in_progress")
        sub = await api.update_subtask(sub["id"], status="completed", result={"ok": True})
        assert sub["status"] == "completed" and sub["completed_at"]
        page = await api.list_subtasks(task["id"])
        assert [s["id"] for s in page.items] == [sub["id"]] and page.next_cursor is None

        await api.update_task(task["id"], status="in_progress")
        done = await api.update_task(task["id"], status="completed", result={"pr": 42})
        assert done["status"] == "completed" and done["result"] == {"pr": 42}
        with pytest.raises(ApiError) as illegal:
            await api.update_task(task["id"], status="pending")
        assert illegal.value.status == 409 and illegal.value.code == "ILLEGAL_TRANSITION"

        ended = await api.end_session("release-1")
        assert ended["status"] == "ended" and ended["ended_at"]
        assert [s["id"] for s in (await api.list_sessions()).items] == ["release-1"]


async def test_filters_and_pagination(start_service: ServiceFactory) -> None:
    service = await start_service(surfaces=("api",))
    async with rest(service) as api:
        for n in range(5):
            await api.create_task(f"t{n}", agent_id="a" if n % 2 else "b")
        first = await api.list_tasks(limit=2)
        assert len(first.items) == 2 and first.next_cursor
        everything = [t["title"] async for t in api.iterate(api.list_tasks, limit=2)]
        assert everything == [f"t{n}" for n in range(5)]
        only_a = [t["title"] async for t in api.iterate(api.list_tasks, agent_id="a")]
        assert only_a == ["t1", "t3"]
        assert (await api.list_tasks(status="completed")).items == []


async def test_agents_messages_actions_events_metrics(start_service: ServiceFactory) -> None:
    service = await start_service(surfaces=("api",))
    async with rest(service) as api:
        agent = await api.register_agent("backend", name="Backend", kind="coder")
        assert agent["id"] == "backend" and agent["status"] == "offline"
        again = await api.register_agent("backend", kind="reviewer")  # idempotent
        assert again["kind"] == "reviewer" and again["name"] == "Backend"
        assert (await api.heartbeat("backend"))["id"] == "backend"
        assert [a["id"] for a in (await api.list_agents()).items] == ["backend"]
        assert (await api.get_agent("backend"))["kind"] == "reviewer"

        message = await api.send_message("planner", "backend", "hello", data={"n": 1})
        unread = await api.list_messages(to_agent="backend", unread=True)
        assert [m["id"] for m in unread.items] == [message["id"]]
        assert (await api.mark_read(message["id"]))["read_at"]
        assert (await api.list_messages(to_agent="backend", unread=True)).items == []

        action = await api.log_action("backend", "tool_call", detail={"tool": "grep"})
        assert action["kind"] == "tool_call"
        published = await api.publish("topics/deploys", "deploy.started", {"v": "1.4"})
        assert published["channel"] == "topics/deploys" and published["offset"] >= 1
        metrics = await api.metrics()
        assert {"active_sessions", "tasks_by_status", "events_per_second"} <= metrics.keys()
        assert (await api.health())["status"] == "healthy"


async def test_errors_carry_status_and_code(start_service: ServiceFactory) -> None:
    service = await start_service(surfaces=("api",))
    async with rest(service) as api:
        with pytest.raises(ApiError) as missing:
            await api.get_task("task_does_not_exist")
        assert missing.value.status == 404 and missing.value.code == "NOT_FOUND"
        assert "task_does_not_exist" in str(missing.value.detail)
        with pytest.raises(ApiError) as invalid:
            await api.create_task("")
        assert invalid.value.status == 422 and invalid.value.code == "VALIDATION_ERROR"
        with pytest.raises(ApiError) as bad_channel:
            await api.publish("not a channel", "x.y")
        assert bad_channel.value.status == 422
        # An id is one path segment: it cannot reach another route.
        with pytest.raises(ApiError) as sneaky:
            await api.get_task("../sessions")
        assert sneaky.value.status in (404, 422)


def test_token_is_sent_as_bearer() -> None:
    api = RestClient("http://127.0.0.1:1", token="t0ken")
    assert api._http.headers["Authorization"] == "Bearer t0ken"
    assert "Authorization" not in RestClient("http://127.0.0.1:1")._http.headers


async def test_rest_change_reaches_the_realtime_client(start_service: ServiceFactory) -> None:
    """The two halves of the SDK together: a REST write becomes a WebSocket event."""
    service = await start_service(surfaces=("api", "ws"))
    url = f"ws://127.0.0.1:{service.settings.ws_port}/ws"
    async with rest(service) as api, RealtimeClient(url, agent_id="worker") as ws:
        events = ws.events("agents/worker", event="task.*")
        first = asyncio.ensure_future(anext(events))
        await ws.subscribe("agents/worker")
        task = await api.create_task("For the worker", agent_id="worker")
        event = await asyncio.wait_for(first, 5)
        assert event.event == "task.created" and event.data["task_id"] == task["id"]
        await events.aclose()


async def test_lists_newest_first(service: Service) -> None:
    from app.client.rest import RestClient

    async with RestClient(f"http://127.0.0.1:{service.settings.api_port}") as rest:
        titles = [f"t{n}" for n in range(3)]
        for title in titles:
            await rest.create_task(title)
        newest = await rest.list_tasks(order="desc", limit=2)
        assert [t["title"] for t in newest.items] == ["t2", "t1"]
        oldest = await rest.list_tasks(order="asc")
        assert [t["title"] for t in oldest.items] == titles
