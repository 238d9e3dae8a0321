"""Webhooks end to end: a real service, a real receiver on loopback (tests/webhook_receiver.py)
verifying every delivery with the `standardwebhooks` package, on SQLite and PostgreSQL.

Short retry schedules (WEBHOOK_RETRY_SCHEDULE=0.2,…) keep each test to seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import WebhookVerificationError

from app.server import Service
from tests.conftest import ClientFactory, ServiceFactory
from tests.databases import BACKENDS, api, data_settings, fresh_database
from tests.webhook_receiver import Answer, Received, Receiver

FAST = {
    "webhook_allow_private": True,
    "webhook_retry_schedule": "0.2,0.2,0.2",
    "webhook_poll_interval": 0.2,
    "webhook_timeout": 2.0,
}


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request, tmp_path) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'webhooks.db'}"


async def start(start_service: ServiceFactory, database_url: str, **overrides: Any) -> Service:
    return await start_service(**data_settings(database_url, **{**FAST, **overrides}))


async def register(http: httpx.AsyncClient, url: str, **body: Any) -> dict[str, Any]:
    response = await http.post("/api/webhooks", json={"url": url, "events": ["*"], **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert created["secret"].startswith("whsec_")
    return created


async def attempts(http: httpx.AsyncClient, webhook_id: str) -> list[dict[str, Any]]:
    """The endpoint's attempts, oldest first."""
    response = await http.get(f"/api/webhooks/{webhook_id}/deliveries", params={"limit": 500})
    assert response.status_code == 200, response.text
    return list(reversed(response.json()["items"]))


async def eventually(check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {check}"
        await asyncio.sleep(0.05)


def types(requests: list[Received]) -> list[str]:
    return [r.json["type"] for r in requests]


# --- every event, signed, once ----------------------------------------------------------------


async def test_every_event_is_delivered_signed_and_once(
    database_url: str, start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start(start_service, database_url)
    async with Receiver() as receiver, api(service) as http:
        hook = await register(http, receiver.url)
        task = (await http.post("/api/tasks", json={"title": "t", "agent_id": "coder"})).json()
        await http.post(f"/api/tasks/{task['id']}/subtasks", json={"title": "s"})
        await http.patch(f"/api/tasks/{task['id']}", json={"status": "in_progress"})
        await http.patch(f"/api/tasks/{task['id']}", json={"status": "completed"})
        message = {"from_agent": "lead", "to_agent": "coder", "content": "hi"}
        assert (await http.post("/api/messages", json=message)).status_code == 201
        agent = await ws_client(service, agent_id="coder")
        await agent.close()
        assert (await http.post(f"/api/webhooks/{hook['id']}/test")).status_code == 202

        wanted = {
            "task.created",
            "subtask.created",
            "task.updated",
            "task.completed",
            "message.new",
            "agent.connected",
            "agent.disconnected",
            "webhook.test",
        }
        await receiver.wait_for(lambda rs: wanted <= set(types(rs)))
        await asyncio.sleep(0.5)  # nothing more, nothing twice
        requests = receiver.requests
        ids = [r.webhook_id for r in requests]
        assert len(ids) == len(set(ids)), f"an event arrived twice: {ids}"
        for request in requests:
            payload = request.verify(hook["secret"])
            assert set(payload) == {"type", "timestamp", "data"}
            assert request.method == "POST" and request.path == "/hook"
            assert request.headers["content-type"] == "application/json"
            assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
            assert request.headers["webhook-signature"].startswith("v1,")
            with pytest.raises(WebhookVerificationError):
                request.verify("whsec_" + "A" * 43 + "=")
        # Outbox events carry the id WebSocket clients see, in outbox order.
        outbox = [
            r for r in requests if r.json["type"].split(".")[0] in ("task", "subtask", "message")
        ]
        numbers = [int(r.webhook_id.removeprefix("evt_")) for r in outbox]
        assert numbers == sorted(numbers)
        completed = next(r for r in requests if r.json["type"] == "task.completed")
        assert completed.json["data"]["task_id"] == task["id"]
        assert completed.json["data"]["status"] == "completed"
        connected = next(r for r in requests if r.json["type"] == "agent.connected")
        assert connected.json["data"]["agent_id"] == "coder"

        rows = await attempts(http, hook["id"])
        assert len(rows) == len(requests)
        assert all(row["succeeded"] and row["status_code"] == 200 for row in rows)
        assert all(row["attempt"] == 1 and row["delivery_state"] == "succeeded" for row in rows)
        assert {row["event_id"] for row in rows} == set(ids)


# --- retries, order, outages -------------------------------------------------------------------


async def test_500_three_times_then_200_is_delivered_on_the_fourth_attempt(
    sqlite_url: str, start_service: ServiceFactory
) -> None:
    answers = iter([500, 500, 500])

    def plan(_request: Received) -> Answer:
        return Answer(next(answers, 200), body=b"busy")

    service = await start(start_service, sqlite_url)
    async with Receiver(plan) as receiver, api(service) as http:
        hook = await register(http, receiver.url, events=["task.created"])
        await http.post("/api/tasks", json={"title": "once"})
        await receiver.wait_for(lambda rs: len(rs) == 4)
        assert len(set(receiver.unique_ids())) == 1  # the same webhook-id each time
        for request in receiver.requests:
            request.verify(hook["secret"])
        gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
        assert all(gap >= 0.15 for gap in gaps), gaps  # 0.2 s ± 10 % between attempts

        async def recorded() -> list[dict[str, Any]] | None:
            rows = await attempts(http, hook["id"])
            return rows if len(rows) == 4 and rows[-1]["delivery_state"] == "succeeded" else None

        rows = await eventually(recorded)
        assert [row["attempt"] for row in rows] == [1, 2, 3, 4]
        assert [row["status_code"] for row in rows] == [500, 500, 500, 200]
        assert [row["succeeded"] for row in rows] == [False, False, False, True]
        assert rows[0]["error"] == "HTTP 500" and rows[0]["response"] == "busy"
        assert all(row["latency_ms"] > 0 for row in rows)
        assert len({row["delivery_id"] for row in rows}) == 1
        await asyncio.sleep(0.6)
        assert len(receiver.requests) == 4


async def test_given_up_after_the_schedule_then_retried_by_hand(
    sqlite_url: str, start_service: ServiceFactory
) -> None:
    """After 1 + len(schedule) failures the delivery is failed and the next one goes; a manual
    retry sends it once more (a replay), with the same webhook-id."""
    failing = True

    def plan(request: Received) -> Answer:
        return Answer(500 if failing and request.json["data"]["title"] == "doomed" else 200)

    service = await start(start_service, sqlite_url)
    async with Receiver(plan) as receiver, api(service) as http:
        hook = await register(http, receiver.url, events=["task.created"])
        await http.post("/api/tasks", json={"title": "doomed"})
        await http.post("/api/tasks", json={"title": "after"})
        await receiver.wait_for(lambda rs: "after" in [r.json["data"]["title"] for r in rs])
        doomed = [r for r in receiver.requests if r.json["data"]["title"] == "doomed"]
        assert len(doomed) == 4  # the first attempt and three retries, before "after"
        rows = await eventually(lambda: _rows_where(http, hook["id"], lambda rows: len(rows) == 5))
        failed = rows[0]
        assert failed["delivery_state"] == "failed"

        failing = False
        response = await http.post(
            f"/api/webhooks/{hook['id']}/deliveries/{failed['delivery_id']}/retry"
        )
        assert response.status_code == 202, response.text
        assert response.json()["state"] == "pending"
        await receiver.wait_for(lambda rs: len(rs) == 6)
        assert receiver.requests[-1].webhook_id == doomed[0].webhook_id
        rows = await eventually(lambda: _rows_where(http, hook["id"], lambda rows: len(rows) == 6))
        assert rows[-1]["attempt"] == 5 and rows[-1]["delivery_id"] == failed["delivery_id"]
        assert rows[-1]["delivery_state"] == "succeeded"

        unknown = await http.post(f"/api/webhooks/{hook['id']}/deliveries/dlv_999999/retry")
        assert unknown.status_code == 404
        bad = await http.post(f"/api/webhooks/{hook['id']}/deliveries/42/retry")
        assert bad.status_code == 422


async def _rows_where(http: httpx.AsyncClient, webhook_id: str, check: Any) -> Any:
    rows = await attempts(http, webhook_id)
    return rows if rows and check(rows) else None


async def test_receiver_down_then_back_gets_every_event_in_order(
    database_url: str, start_service: ServiceFactory
) -> None:
    """The receiver is down (connection refused) for 3 s while 20 events are written.

    Why 3 s and not the issue's 30 s proves the same: what the guarantee depends on is that
    the outage outlasts several retries of the first event (here about ten, at 0.3 s) while
    the later events queue behind it, and ends before its schedule is used up; the length
    in seconds only scales both. Ten times longer would prove nothing more and cost 27 s."""
    service = await start(
        start_service, database_url, webhook_retry_schedule=",".join(["0.3"] * 40)
    )
    receiver = Receiver()
    async with api(service) as http:
        hook = await register(http, receiver.url, events=["task.created"])
        titles = [f"t{i:02d}" for i in range(20)]
        for title in titles[:10]:
            await http.post("/api/tasks", json={"title": title})
        await asyncio.sleep(1.5)  # the first event is being retried
        for title in titles[10:]:
            await http.post("/api/tasks", json={"title": title})
        await asyncio.sleep(1.5)
        rows = await attempts(http, hook["id"])
        assert len(rows) >= 4 and not any(row["succeeded"] for row in rows)
        assert {row["event_id"] for row in rows} == {rows[0]["event_id"]}  # only the head
        assert all("ConnectError" in (row["error"] or "") for row in rows)
        await receiver.start()
        try:
            await receiver.wait_for(lambda rs: len({r.webhook_id for r in rs}) == 20)
            got = [r.json["data"]["title"] for r in receiver.requests]
            assert got == titles, got  # in order, each once
            for request in receiver.requests:
                request.verify(hook["secret"])
        finally:
            await receiver.stop()


async def test_retry_after_is_honoured_on_503_and_429(
    sqlite_url: str, start_service: ServiceFactory
) -> None:
    answers = iter([Answer(503, {"Retry-After": "1"}), Answer(429, {"Retry-After": "1"})])

    def plan(_request: Received) -> Answer:
        return next(answers, Answer(200))

    service = await start(start_service, sqlite_url, webhook_retry_schedule="0.1,0.1,0.1")
    async with Receiver(plan) as receiver, api(service) as http:
        await register(http, receiver.url, events=["task.created"])
        await http.post("/api/tasks", json={"title": "slow down"})
        requests = await receiver.wait_for(lambda rs: len(rs) == 3)
        gaps = [b.at - a.at for a, b in zip(requests, requests[1:], strict=False)]
        assert all(0.9 <= gap < 5 for gap in gaps), gaps  # 1 s asked, not the 0.1 s schedule


async def test_410_disables_the_endpoint_and_says_so_on_global(
    sqlite_url: str, start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start(start_service, sqlite_url)
    watcher = await ws_client(service)
    await watcher.subscribe("global")
    async with Receiver(lambda _r: Answer(410)) as receiver, api(service) as http:
        hook = await register(http, receiver.url, events=["task.created"])
        await http.post("/api/tasks", json={"title": "one"})
        frame = await watcher.next_event("webhook.disabled", timeout=10)
        assert frame["data"]["webhook_id"] == hook["id"]
        assert "410" in frame["data"]["reason"]
        assert "url" not in frame["data"]  # a URL may hold a credential; global is public
        state = (await http.get(f"/api/webhooks/{hook['id']}")).json()
        assert state["enabled"] is False and "410" in state["disabled_reason"]
        await http.post("/api/tasks", json={"title": "two"})
        await asyncio.sleep(0.6)
        assert len(receiver.requests) == 1  # nothing more to a disabled endpoint
        refused = await http.post(f"/api/webhooks/{hook['id']}/test")
        assert refused.status_code == 409 and refused.json()["code"] == "WEBHOOK_DISABLED"

        receiver.plan = lambda _r: Answer(200)
        enabled = await http.patch(f"/api/webhooks/{hook['id']}", json={"enabled": True})
        assert enabled.json()["enabled"] is True and enabled.json()["disabled_reason"] is None
        await http.post("/api/tasks", json={"title": "three"})
        await receiver.wait_for(lambda rs: rs[-1].json["data"]["title"] == "three")


async def test_an_endpoint_failing_too_long_is_disabled(
    sqlite_url: str, start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start(
        start_service,
        sqlite_url,
        webhook_disable_after=1.0,
        webhook_retry_schedule=",".join(["0.3"] * 20),
    )
    watcher = await ws_client(service)
    await watcher.subscribe("global")
    async with Receiver(lambda _r: Answer(500)) as receiver, api(service) as http:
        hook = await register(http, receiver.url, events=["task.created"])
        await http.post("/api/tasks", json={"title": "never"})
        frame = await watcher.next_event("webhook.disabled", timeout=10)
        assert frame["data"]["webhook_id"] == hook["id"]
        assert "failing since" in frame["data"]["reason"]
        count = len(receiver.requests)
        assert 3 <= count <= 8  # about a second of 0.3 s retries
        await asyncio.sleep(0.7)
        assert len(receiver.requests) == count
        state = (await http.get(f"/api/webhooks/{hook['id']}")).json()
        assert state["enabled"] is False and state["pending_deliveries"] == 1


async def test_redirects_are_not_followed_and_answers_are_cut_at_1_kib(
    sqlite_url: str, start_service: ServiceFactory
) -> None:
    async with Receiver() as target:

        def plan(request: Received) -> Answer:
            if request.json["data"]["title"] == "moved":
                return Answer(302, {"Location": target.url})
            return Answer(200, body=b"x" * 10_000)

        service = await start(start_service, sqlite_url, webhook_retry_schedule="")
        async with Receiver(plan) as receiver, api(service) as http:
            hook = await register(http, receiver.url, events=["task.created"])
            await http.post("/api/tasks", json={"title": "moved"})
            await http.post("/api/tasks", json={"title": "long answer"})
            rows = await eventually(
                lambda: _rows_where(http, hook["id"], lambda rows: len(rows) == 2)
            )
            assert rows[0]["status_code"] == 302 and not rows[0]["succeeded"]
            assert rows[0]["error"].startswith("redirect not followed")
            assert rows[0]["delivery_state"] == "failed"  # an empty schedule: no retry
            assert rows[1]["succeeded"] and rows[1]["response"] == "x" * 1024
            assert target.requests == []


async def test_a_receiver_slower_than_the_timeout_is_a_failure(
    sqlite_url: str, start_service: ServiceFactory
) -> None:
    service = await start(start_service, sqlite_url, webhook_timeout=0.5)
    slow = iter([Answer(delay=3)])
    async with Receiver(lambda _r: next(slow, Answer())) as receiver, api(service) as http:
        hook = await register(http, receiver.url, events=["task.created"])
        await http.post("/api/tasks", json={"title": "slow"})
        rows = await eventually(
            lambda: _rows_where(
                http, hook["id"], lambda rows: rows[-1]["delivery_state"] == "succeeded"
            )
        )
        assert rows[0]["error"] == "timed out after 0.5 s" and rows[0]["status_code"] is None
        assert 400 <= rows[0]["latency_ms"] < 2000
        assert len(receiver.unique_ids()) == 1
