"""Webhooks end to end: a real service, a real receiver on loopback (tests/webhook_receiver.py)
verifying every delivery with the `standardwebhooks` package, on SQLite and PostgreSQL.

Short retry schedules (WEBHOOK_RETRY_SCHEDULE=0.2,…) keep each test to seconds.
"""

from __future__ import annotations

import asyncio
import signal
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
from tests.test_bridge import execute_raw
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
        # An outside writer (psql, a script): the agent-work issue's reservations.
        await execute_raw(
            database_url,
            "INSERT INTO reservations (id, agent_id, paths, expires_at) "
            "VALUES ('r1', 'coder', '[\"src/\"]', '2099-01-01 00:00:00')",
        )

        wanted = {
            "task.created",
            "subtask.created",
            "task.updated",
            "task.completed",
            "message.new",
            "agent.connected",
            "agent.disconnected",
            "webhook.test",
            "reservation.created",
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
            r
            for r in requests
            if r.json["type"].split(".")[0] in ("task", "subtask", "message", "reservation")
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


# --- a node killed mid-delivery ----------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_a_node_killed_mid_delivery_leaves_nothing_undelivered(
    database_url: str, tmp_path: Path
) -> None:
    """Node A is SIGKILLed while the receiver holds its first POST open; node B (another
    process, same database) takes the endpoint once A's lease runs out and delivers every
    event — the interrupted one again, under the same webhook-id — in order."""
    from tests.test_cluster import Nodes

    first = True

    def plan(_request: Received) -> Answer:
        nonlocal first
        hang, first = first, False
        return Answer(hang=hang)

    nodes = Nodes(
        tmp_path,
        {
            "DATABASE_URL": database_url,
            "MIGRATE_ON_START": "true",
            "WEBHOOK_ALLOW_PRIVATE": "true",
            "WEBHOOK_RETRY_SCHEDULE": "0.2,0.2,0.2",
            "WEBHOOK_POLL_INTERVAL": "0.2",
            "WEBHOOK_TIMEOUT": "1.5",  # lease: 2 × 1.5 + 1 = 4 s
        },
    )
    try:
        async with Receiver(plan) as receiver:
            a = await nodes.start("hooks-a")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{a.api_port}") as http:
                hook = await register(http, receiver.url, events=["task.created"])
                for i in range(10):
                    await http.post("/api/tasks", json={"title": f"t{i}"})
            await receiver.wait_for(lambda rs: len(rs) == 1)
            await a.stop(signal.SIGKILL)
            killed_at = time.monotonic()

            b = await nodes.start("hooks-b")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{b.api_port}") as http:
                for i in range(10, 15):
                    await http.post("/api/tasks", json={"title": f"t{i}"})
                await receiver.wait_for(lambda rs: len(set(r.webhook_id for r in rs)) == 15, 30)
                titles = [r.json["data"]["title"] for r in receiver.requests]
                assert titles[0] == "t0" and titles[1] == "t0"  # cut off, then again
                assert titles[1:] == [f"t{i}" for i in range(15)], titles
                assert receiver.requests[0].webhook_id == receiver.requests[1].webhook_id
                assert receiver.requests[1].at - killed_at < 15  # within about the lease
                for request in receiver.requests:
                    request.verify(hook["secret"])
                rows = await eventually(
                    lambda: _rows_where(http, hook["id"], lambda rows: len(rows) == 15)
                )
                assert {row["node_id"] for row in rows} == {"hooks-b"}
                assert all(row["delivery_state"] == "succeeded" for row in rows)
    finally:
        await nodes.close()


# --- secrets -------------------------------------------------------------------------------------


async def test_rotation_signs_with_both_secrets_during_the_overlap(
    sqlite_url: str, start_service: ServiceFactory
) -> None:
    service = await start(start_service, sqlite_url, webhook_secret_overlap=1.5)
    async with Receiver() as receiver, api(service) as http:
        hook = await register(http, receiver.url, events=["task.created"])
        old = hook["secret"]
        await http.post("/api/tasks", json={"title": "before"})
        await receiver.wait_for(lambda rs: len(rs) == 1)
        assert len(receiver.requests[0].headers["webhook-signature"].split(" ")) == 1

        rotated = await http.post(f"/api/webhooks/{hook['id']}/rotate-secret")
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["secret"]
        assert new.startswith("whsec_") and new != old
        listed = (await http.get(f"/api/webhooks/{hook['id']}")).json()
        assert listed["previous_secret_expires_at"] is not None and "secret" not in listed

        await http.post("/api/tasks", json={"title": "during"})
        during = (await receiver.wait_for(lambda rs: len(rs) == 2))[1]
        assert len(during.headers["webhook-signature"].split(" ")) == 2
        assert during.verify(old)["data"]["title"] == "during"  # a receiver not yet updated
        assert during.verify(new)["data"]["title"] == "during"  # one already updated

        await asyncio.sleep(1.6)
        await http.post("/api/tasks", json={"title": "after"})
        after = (await receiver.wait_for(lambda rs: len(rs) == 3))[2]
        assert len(after.headers["webhook-signature"].split(" ")) == 1
        assert after.verify(new)["data"]["title"] == "after"
        with pytest.raises(WebhookVerificationError):
            after.verify(old)


def test_signatures_follow_the_standard_webhooks_scheme() -> None:
    """What `standardwebhooks` itself signs is what we send (its reference, byte for byte)."""
    from datetime import UTC, datetime

    from standardwebhooks import Webhook

    from app.webhooks import signing

    secret = signing.new_secret()
    raw = signing.secret_key(secret)
    assert len(raw) == 32
    body = b'{"type":"task.created","timestamp":"2026-01-30T12:00:00.000Z","data":{}}'
    ours = signing.signature(secret, "evt_1", 1674087231, body)
    theirs = Webhook(secret).sign("evt_1", datetime.fromtimestamp(1674087231, UTC), body.decode())
    assert ours == theirs


# --- where a webhook may go (SSRF) ---------------------------------------------------------------


REFUSED_URLS = [
    ("http://127.0.0.1:9/x", "loopback"),
    ("http://localhost:9/x", "loopback"),
    ("http://[::1]:9/", "loopback"),
    ("http://10.0.0.7/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://[fd00::1]/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://100.100.100.200/", "not a public address"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[2002:a00:1::]/", "private"),
    ("http://224.0.0.1/", "multicast"),
]


async def test_registration_refuses_urls_that_are_not_public(
    sqlite_url: str, start_service: ServiceFactory
) -> None:
    service = await start(start_service, sqlite_url, webhook_allow_private=False)
    async with api(service) as http:
        for url, why in REFUSED_URLS:
            response = await http.post("/api/webhooks", json={"url": url, "events": ["*"]})
            assert response.status_code == 422, (url, response.text)
            body = response.json()
            assert body["code"] == "WEBHOOK_URL_REFUSED", (url, body)
            assert body["detail"][0]["loc"] == ["body", "url"]
            assert why in body["detail"][0]["msg"], (url, body)
            assert "WEBHOOK_ALLOW_PRIVATE" in body["detail"][0]["msg"]
        for url, code in (
            ("ftp://example.com/", "WEBHOOK_URL_REFUSED"),
            ("file:///etc/passwd", "WEBHOOK_URL_REFUSED"),
            ("http:///nohost", "WEBHOOK_URL_REFUSED"),
            ("http://example.com:99999/", "WEBHOOK_URL_REFUSED"),
            ("http://exa mple.com/", "WEBHOOK_URL_REFUSED"),
            ("http://no-such-host.invalid/", "WEBHOOK_URL_UNRESOLVABLE"),
        ):
            response = await http.post("/api/webhooks", json={"url": url, "events": ["*"]})
            assert response.status_code == 422, (url, response.text)
            assert response.json()["code"] == code, (url, response.text)
        assert (await http.get("/api/webhooks")).json()["items"] == []
        documentation = await http.post(
            "/api/webhooks", json={"url": "https://192.0.2.1/", "events": ["*"]}
        )
        assert documentation.status_code == 422  # TEST-NET-1: not a public address either
        # A public address is accepted (no event it wants happens here, so nothing is sent).
        public = await http.post(
            "/api/webhooks", json={"url": "https://8.8.8.8/x", "events": ["reservation.expired"]}
        )
        assert public.status_code == 201, public.text
        assert (await http.delete(f"/api/webhooks/{public.json()['id']}")).status_code == 204


async def test_every_attempt_checks_the_address_again(
    sqlite_url: str, start_service: ServiceFactory
) -> None:
    """An endpoint registered while private addresses were allowed is refused at the attempt
    once they are not (as a host whose DNS answer changed to a private address would be):
    the receiver gets nothing and the attempt says why."""
    async with Receiver() as receiver:
        first = await start(start_service, sqlite_url)
        async with api(first) as http:
            url = f"http://localhost:{receiver.port}/hook"  # a name, resolved per attempt
            hook = await register(http, url, events=["task.created"])
            await http.post("/api/tasks", json={"title": "allowed"})
            arrived = (await receiver.wait_for(lambda rs: len(rs) == 1))[0]
            assert arrived.headers["host"] == f"localhost:{receiver.port}"  # the URL's host
        await first.stop()

        second = await start(
            start_service, sqlite_url, webhook_allow_private=False, migrate_on_start=False
        )
        async with api(second) as http:
            await http.post("/api/tasks", json={"title": "refused"})
            rows = await eventually(
                lambda: _rows_where(http, hook["id"], lambda rows: len(rows) >= 2)
            )
            assert rows[1]["status_code"] is None and not rows[1]["succeeded"]
            assert rows[1]["error"].startswith("refused: localhost resolves to")
            assert "loopback" in rows[1]["error"]
        await asyncio.sleep(0.5)
        assert len(receiver.requests) == 1


# --- filters and the API's rules -----------------------------------------------------------------


async def test_event_and_channel_filters(sqlite_url: str, start_service: ServiceFactory) -> None:
    service = await start(start_service, sqlite_url)
    async with Receiver() as receiver, api(service) as http:
        coder = await register(
            http, receiver.url, events=["task.completed", "message.*"], channels=["agents/coder"]
        )
        sessions = await register(
            http,
            receiver.url.replace("/hook", "/sessions"),
            events=["task.*"],
            channels=["sessions/*"],
        )
        mine = await http.post("/api/tasks", json={"title": "c", "agent_id": "coder"})
        other = await http.post("/api/tasks", json={"title": "o", "agent_id": "other"})
        in_session = await http.post("/api/tasks", json={"title": "s", "session_id": "s1"})
        for task in (mine, other, in_session):
            await http.patch(f"/api/tasks/{task.json()['id']}", json={"status": "completed"})
        await http.post(
            "/api/messages", json={"from_agent": "x", "to_agent": "coder", "content": "hi"}
        )
        await http.post(
            "/api/messages", json={"from_agent": "x", "to_agent": "other", "content": "no"}
        )
        await receiver.wait_for(lambda rs: len(rs) >= 4)
        await asyncio.sleep(0.6)
        by_path: dict[str, list[tuple[str, str]]] = {}
        for request in receiver.requests:
            data = request.json["data"]
            ident = data.get("task_id") or data.get("content")
            by_path.setdefault(request.path, []).append((request.json["type"], ident))
        assert by_path["/hook"] == [("task.completed", mine.json()["id"]), ("message.new", "hi")]
        assert by_path["/sessions"] == [
            ("task.created", in_session.json()["id"]),
            ("task.completed", in_session.json()["id"]),
        ]
        assert coder["channels"] == ["agents/coder"] and sessions["events"] == ["task.*"]

        changed = await http.patch(
            f"/api/webhooks/{coder['id']}", json={"channels": None, "events": ["task.created"]}
        )
        assert changed.status_code == 200 and changed.json()["channels"] is None
        await http.post("/api/tasks", json={"title": "anyone"})
        await receiver.wait_for(
            lambda rs: rs[-1].json["type"] == "task.created" and rs[-1].path == "/hook"
        )


async def test_with_no_endpoint_a_commit_costs_no_fan_out_and_a_new_one_is_served_at_once(
    sqlite_url: str, start_service: ServiceFactory
) -> None:
    """No enabled endpoint: commits do not open the fan-out's write transaction (the cursor
    catches up once per poll interval, here 30 s). One registered meanwhile is served from
    the next event on, at once: it is owed nothing from before (`start_after`)."""
    service = await start(start_service, sqlite_url, webhook_poll_interval=30)
    dispatcher = service.app.state.runtime.webhooks.dispatcher
    async with Receiver() as receiver, api(service) as http:
        await http.post("/api/tasks", json={"title": "first"})

        async def looked() -> bool:
            return bool(dispatcher.events_read >= 1)

        await eventually(looked)  # one look: nobody to call
        read = dispatcher.events_read
        for n in range(20):
            assert (await http.post("/api/tasks", json={"title": f"t{n}"})).status_code == 201
        await asyncio.sleep(0.5)
        assert dispatcher.events_read == read  # 20 commits, not one batch

        await register(http, receiver.url, events=["task.created"])
        started = time.monotonic()
        after = (await http.post("/api/tasks", json={"title": "after"})).json()
        await receiver.wait_for(lambda rs: len(rs) >= 1)
        assert time.monotonic() - started < 5  # not the 30 s poll
        await asyncio.sleep(0.5)
        assert [r.json["data"]["task_id"] for r in receiver.requests] == [after["id"]]
        assert dispatcher.events_read >= read + 21  # the cursor caught up on the way


async def test_events_while_disabled_are_not_sent_when_enabled_again(
    sqlite_url: str, start_service: ServiceFactory
) -> None:
    """A disabled endpoint gets no new events, however far the fan-out's cursor lags (it
    does while no endpoint is enabled): enabled again, it starts at the outbox head."""
    service = await start(start_service, sqlite_url, webhook_poll_interval=30)
    async with Receiver() as receiver, api(service) as http:
        hook = await register(http, receiver.url, events=["task.created"])
        before = (await http.post("/api/tasks", json={"title": "before"})).json()
        await receiver.wait_for(lambda rs: len(rs) >= 1)
        off = await http.patch(f"/api/webhooks/{hook['id']}", json={"enabled": False})
        assert off.status_code == 200 and off.json()["enabled"] is False
        for n in range(5):
            await http.post("/api/tasks", json={"title": f"while-disabled-{n}"})
        await asyncio.sleep(0.3)
        on = await http.patch(f"/api/webhooks/{hook['id']}", json={"enabled": True})
        assert on.status_code == 200 and on.json()["enabled"] is True
        after = (await http.post("/api/tasks", json={"title": "after"})).json()
        await receiver.wait_for(lambda rs: len(rs) >= 2)
        await asyncio.sleep(0.5)
        sent = [r.json["data"]["task_id"] for r in receiver.requests]
        assert sent == [before["id"], after["id"]]


async def test_bad_input_is_a_clear_422_and_changes_nothing(
    sqlite_url: str, start_service: ServiceFactory
) -> None:
    service = await start(start_service, sqlite_url, webhook_max_endpoints=2)
    async with api(service) as http:
        cases = [
            ({"url": "http://127.0.0.1/", "events": ["task.nope"]}, "INVALID_EVENT_FILTER"),
            ({"url": "http://127.0.0.1/", "events": ["Task.*"]}, "INVALID_EVENT_FILTER"),
            ({"url": "http://127.0.0.1/", "events": ["task.[a]"]}, "INVALID_EVENT_FILTER"),
            (
                {"url": "http://127.0.0.1/", "events": ["*"], "channels": ["topics/x"]},
                "INVALID_CHANNEL_FILTER",
            ),
            (
                {"url": "http://127.0.0.1/", "events": ["*"], "channels": ["agents/"]},
                "INVALID_CHANNEL_FILTER",
            ),
        ]
        for body, code in cases:
            response = await http.post("/api/webhooks", json=body)
            assert response.status_code == 422, (body, response.text)
            assert response.json()["code"] == code, (body, response.text)
        for body in (
            {"url": "http://127.0.0.1/"},
            {"url": "http://127.0.0.1/", "events": []},
            {"url": "http://127.0.0.1/", "events": ["*"], "secret": "mine"},
            {"url": "x" * 3000, "events": ["*"]},
        ):
            assert (await http.post("/api/webhooks", json=body)).status_code == 422, body
        assert (await http.get("/api/webhooks")).json()["items"] == []

        a = await register(http, "http://127.0.0.1:9/a")
        await register(http, "http://127.0.0.1:9/b")
        full = await http.post(
            "/api/webhooks", json={"url": "http://127.0.0.1:9/c", "events": ["*"]}
        )
        assert full.status_code == 409 and full.json()["code"] == "TOO_MANY_WEBHOOKS"
        bad_patch = await http.patch(f"/api/webhooks/{a['id']}", json={"url": "gopher://x"})
        assert bad_patch.status_code == 422
        assert (await http.get(f"/api/webhooks/{a['id']}")).json()["url"] == "http://127.0.0.1:9/a"
        assert (await http.get("/api/webhooks/wh_missing")).status_code == 404
        assert (await http.delete(f"/api/webhooks/{a['id']}")).status_code == 204
        assert (await http.get(f"/api/webhooks/{a['id']}")).status_code == 404
        bad_cursor = await http.get(f"/api/webhooks/{a['id']}/deliveries", params={"cursor": "x"})
        assert bad_cursor.status_code == 404  # the endpoint is gone first


# --- several nodes at once; TLS to the checked address -----------------------------------------


async def test_two_nodes_on_one_database_deliver_each_event_once_in_order(
    database_url: str, start_service: ServiceFactory
) -> None:
    """Both nodes fan out and deliver at the same time (events written on both): the cursor
    and the endpoint lease let one of them do each step, so every event arrives once."""
    one = await start(start_service, database_url)
    two = await start(start_service, database_url, migrate_on_start=False)
    async with Receiver() as receiver, api(one) as first, api(two) as second:
        hook = await register(first, receiver.url, events=["task.created"])
        titles = [f"t{i:02d}" for i in range(40)]
        for i, title in enumerate(titles):
            await (first if i % 2 else second).post("/api/tasks", json={"title": title})
        await receiver.wait_for(lambda rs: len({r.webhook_id for r in rs}) == 40)
        await asyncio.sleep(0.6)
        got = [r.json["data"]["title"] for r in receiver.requests]
        assert got == titles, got
        rows = await attempts(first, hook["id"])
        assert len(rows) == 40 and all(row["attempt"] == 1 for row in rows)
        assert len({row["node_id"] for row in rows}) >= 1


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for `name` (and its key), as PEM files."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_goes_to_the_checked_address_with_the_urls_name(tmp_path: Path) -> None:
    """`https://localhost:…`: the connection goes to the address the guard resolved, the TLS
    handshake names `localhost` (SNI) and the certificate is checked against that name; a
    certificate for another name is refused."""
    import ssl

    from app.webhooks.addresses import AddressGuard
    from app.webhooks.sender import Sender

    cert, key = _certificate(tmp_path, "localhost")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    names: list[str | None] = []
    server_tls.sni_callback = lambda _sock, name, _ctx: names.append(name)  # type: ignore[assignment,misc,return-value]
    trust = ssl.create_default_context(cafile=str(cert))
    sender = Sender(AddressGuard(allow_private=True), timeout=5, ssl_context=trust)
    try:
        async with Receiver(tls=server_tls) as receiver:
            url = f"https://localhost:{receiver.port}/hook"
            outcome = await sender.post(url, {"webhook-id": "evt_1"}, b"{}")
            assert outcome.succeeded, outcome
            assert names == ["localhost"]
            assert receiver.requests[0].headers["host"] == f"localhost:{receiver.port}"

            other_cert, other_key = _certificate(tmp_path, "other.example")
            wrong = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            wrong.load_cert_chain(other_cert, other_key)
            async with Receiver(tls=wrong) as impostor:
                url = f"https://localhost:{impostor.port}/hook"
                refused = await sender.post(url, {"webhook-id": "evt_2"}, b"{}")
                assert not refused.succeeded and refused.status_code is None
                assert "CERTIFICATE_VERIFY_FAILED" in (refused.error or ""), refused
                assert impostor.requests == []
    finally:
        await sender.close()
