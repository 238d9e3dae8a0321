"""The Python REST client (context_manager_client.rest) against a real API: every endpoint."""

from __future__ import annotations

import asyncio

import pytest
from context_manager_client import ApiError, RealtimeClient, RestClient
from context_manager_client.rest import ENDPOINTS

from app.main import create_app
from app.server import Service
from tests.conftest import ServiceFactory, SettingsFactory


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
    from context_manager_client.rest import RestClient

    async with RestClient(f"http://127.0.0.1:{service.settings.api_port}") as rest:
        titles = [f"t{n}" for n in range(3)]
        for title in titles:
            await rest.create_task(title)
        newest = await rest.list_tasks(order="desc", limit=2)
        assert [t["title"] for t in newest.items] == ["t2", "t1"]
        oldest = await rest.list_tasks(order="asc")
        assert [t["title"] for t in oldest.items] == titles


def test_every_endpoint_has_a_method(make_settings: SettingsFactory) -> None:
    """ENDPOINTS names one RestClient method for each operation of the server's OpenAPI."""
    spec = create_app(make_settings()).openapi()
    operations = {
        f"{method.upper()} {path}" for path, item in spec["paths"].items() for method in item
    }
    missing = sorted(operations - ENDPOINTS.keys())
    assert not missing, f"endpoints without a RestClient method (add them to rest.py): {missing}"
    assert not ENDPOINTS.keys() - operations, "ENDPOINTS names operations the API does not have"
    for name in ENDPOINTS.values():
        assert callable(getattr(RestClient, name, None)), name


async def test_claims_and_leases(start_service: ServiceFactory) -> None:
    service = await start_service(surfaces=("api",))
    async with rest(service) as api:
        assert await api.claim_task(agent_id="coder") is None  # nothing ready: 204
        first = await api.create_task("Build", capabilities=["python"], max_attempts=2)
        then = await api.create_task("Ship", depends_on=[first["id"]])
        ready = await api.list_tasks(ready=True)
        assert [t["id"] for t in ready.items] == [first["id"]]
        claimed = await api.claim_task(agent_id="coder", capabilities=["python"], lease_seconds=60)
        assert claimed is not None and claimed["task"]["id"] == first["id"]
        lease = claimed["lease"]
        assert lease["agent_id"] == "coder" and claimed["task"]["status"] == "in_progress"
        renewed = await api.renew_lease(first["id"], lease["id"], lease_seconds=120)
        assert renewed["lease"] is not None and renewed["lease"]["id"] == lease["id"]
        released = await api.release_task(first["id"], lease["id"])
        assert released["status"] == "pending" and released["lease"] is None
        with pytest.raises(ApiError) as lost:
            await api.complete_task(first["id"], lease["id"])
        assert lost.value.status == 409 and lost.value.code == "LEASE_LOST"

        again = await api.claim_task(agent_id="coder", capabilities=["python"])
        assert again is not None
        failed = await api.fail_task(first["id"], again["lease"]["id"], "flaky", retry=True)
        assert failed["status"] == "pending" and failed["attempts"] == 1
        third = await api.claim_task(agent_id="coder", capabilities=["python"])
        assert third is not None
        done = await api.complete_task(first["id"], third["lease"]["id"], result={"ok": 1})
        assert done["status"] == "completed" and done["result"] == {"ok": 1}
        assert [t["id"] for t in (await api.list_tasks(ready=True)).items] == [then["id"]]


async def test_a_claim_waits_for_a_task(start_service: ServiceFactory) -> None:
    """wait_seconds is a long poll: the client's timeout is stretched by it."""
    service = await start_service(surfaces=("api",))
    async with rest(service, timeout=1.0) as api, rest(service) as other:
        waiting = asyncio.ensure_future(api.claim_task(agent_id="coder", wait_seconds=3))
        await asyncio.sleep(1.2)  # longer than the client's own timeout
        task = await other.create_task("Late")
        claimed = await asyncio.wait_for(waiting, 5)
        assert claimed is not None and claimed["task"]["id"] == task["id"]


async def test_inbox_messages_threads_and_heartbeats(start_service: ServiceFactory) -> None:
    service = await start_service(surfaces=("api",))
    async with rest(service, timeout=1.0) as api:
        await api.register_agent("coder", capabilities=["python"], summary="writes code")
        await api.register_agent("planner", capabilities=["plans"])
        assert [a["id"] for a in (await api.list_agents(capability="python")).items] == ["coder"]
        assert (await api.list_agents(online=True)).items == []
        beat = await api.heartbeat("coder", activity="editing", summary="on task 1")
        assert (beat["activity"], beat["summary"]) == ("editing", "on task 1")

        empty = await api.read_inbox("coder", wait=0)
        assert empty["messages"] == []
        waiting = asyncio.ensure_future(api.read_inbox("coder", wait=3))
        await asyncio.sleep(1.2)  # beyond the client's timeout: the long poll stretches it
        first = await api.send_message("planner", "coder", "start", thread_id="plan-1")
        inbox = await asyncio.wait_for(waiting, 5)
        assert [m["id"] for m in inbox["messages"]] == [first["id"]]
        reply = await api.send_message(
            "coder", "planner", "on it", thread_id="plan-1", reply_to=first["id"]
        )
        assert (await api.get_message(reply["id"]))["reply_to"] == first["id"]
        thread = await api.list_messages(thread_id="plan-1")
        assert [m["id"] for m in thread.items] == [first["id"], reply["id"]]
        assert [m["id"] for m in (await api.list_messages(from_agent="coder")).items] == [
            reply["id"]
        ]

        position = await api.ack_inbox("coder", inbox["cursor"])
        assert position["acked"] == inbox["cursor"]
        assert (await api.read_inbox("coder"))["messages"] == []


async def test_reservations(start_service: ServiceFactory) -> None:
    service = await start_service(surfaces=("api",))
    async with rest(service) as api:
        mine = await api.reserve(["app/api/"], agent_id="coder", ttl_seconds=60, reason="refactor")
        assert mine["active"] and mine["paths"] == ["app/api"]  # normalised
        with pytest.raises(ApiError) as conflict:
            await api.reserve(["app/api/routes.py"], agent_id="other")
        assert conflict.value.status == 409 and conflict.value.code == "RESERVATION_CONFLICT"
        assert [r["id"] for r in conflict.value.body["conflicts"]] == [mine["id"]]
        held = await api.list_reservations(path="app/api/tasks.py")
        assert [r["id"] for r in held.items] == [mine["id"]]
        assert (await api.list_reservations(agent_id="other")).items == []
        renewed = await api.renew_reservation(mine["id"], ttl_seconds=600)
        assert renewed["expires_at"] > mine["expires_at"]
        assert await api.release_reservation(mine["id"]) is None
        assert (await api.list_reservations()).items == []
        ended = await api.list_reservations(active=False)
        assert [r["id"] for r in ended.items] == [mine["id"]] and not ended.items[0]["active"]


async def test_channels_metrics_history_index_and_idempotency(
    start_service: ServiceFactory,
) -> None:
    service = await start_service(surfaces=("api", "ws"))
    async with rest(service) as api:
        first = await api.publish("topics/deploys", "deploy.started", {"v": 1})
        await api.publish("topics/deploys", "deploy.finished", {"v": 1})
        everything = await api.channel_history("topics/deploys", limit=10)
        assert [p["offset"] for p in everything["publications"]] == [1, 2]
        history = await api.channel_history(
            "topics/deploys", since_offset=first["offset"], since_epoch=everything["epoch"]
        )
        since = history["publications"]
        assert [p["event"] for p in since] == ["deploy.finished"] and history["recovered"]
        presence = await api.channel_presence("topics/deploys")
        assert presence["num_clients"] == 0 and presence["channel"] == "topics/deploys"
        snapshots = await api.metrics_history()
        assert {"interval", "items"} <= snapshots.keys()
        assert any(r["name"] == "tasks" for r in (await api.index())["resources"])

        key = "retry-of-create-1"
        created = await api.create_task("Once", idempotency_key=key)
        replayed = await api.create_task("Once", idempotency_key=key)
        assert replayed["id"] == created["id"]
        assert [t["title"] for t in (await api.list_tasks()).items] == ["Once"]
        with pytest.raises(ApiError) as reused:
            await api.create_task("Another", idempotency_key=key)
        assert reused.value.status == 422 and reused.value.code == "IDEMPOTENCY_KEY_REUSED"
