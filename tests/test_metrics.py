"""Metrics: one KPI snapshot per interval per node, on `metrics` and at GET /api/metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.schemas import MetricsSnapshot
from tests.conftest import ClientFactory, ServiceFactory
from tests.databases import BACKENDS, api, data_settings, fresh_database


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request, tmp_path) as url:
        yield url


async def test_snapshot_values_and_cadence(
    database_url: str, start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(**data_settings(database_url, metrics_interval=0.3))
    async with api(service) as http:
        for body in ({"id": "s1"}, {"id": "s2"}, {"id": "s3"}):
            await http.post("/api/sessions", json=body)
        await http.patch("/api/sessions/s3", json={"status": "ended"})
        outcomes = ["completed", "completed", "failed", None, "in_progress"]
        for i, outcome in enumerate(outcomes):
            task = (await http.post("/api/tasks", json={"title": f"t{i}"})).json()
            if outcome in ("completed", "failed"):
                await http.patch(f"/api/tasks/{task['id']}", json={"status": "in_progress"})
                await asyncio.sleep(0.05)
            if outcome is not None:
                await http.patch(f"/api/tasks/{task['id']}", json={"status": outcome})
        for i in range(3):
            await http.post("/api/actions", json={"agent_id": "a", "kind": f"k{i}"})
        ids = []
        for i in range(3):
            body = {"from_agent": "a", "to_agent": "b", "content": str(i)}
            ids.append((await http.post("/api/messages", json=body)).json()["id"])
        await http.post(f"/api/messages/{ids[0]}/read")

        # Computed every tick, but published only while someone here listens.
        assert service.app.state.metrics.computed >= 1
        assert service.app.state.metrics.published == 0
        listeners = [await ws_client(service, agent_id=f"agent-{i}") for i in range(4)]
        for listener in listeners:
            await listener.subscribe("metrics")
        computed_before = service.app.state.metrics.computed
        frames = [await listener.next_event("metric.update", timeout=5) for listener in listeners]
        # One snapshot per tick, shared by every listener. A tick may come while the later
        # listeners are still subscribing (CI, loaded: two first timestamps 0.3 s apart), so
        # the earlier ones read on to the tick the last one first saw: each gets it too.
        latest = max(f["data"]["timestamp"] for f in frames)
        for n, listener in enumerate(listeners):
            while frames[n]["data"]["timestamp"] < latest:
                frames[n] = await listener.next_event("metric.update", timeout=5)
        assert len({f["data"]["timestamp"] for f in frames}) == 1
        await asyncio.sleep(0.1)  # the agents' upserts are debounced; take a later tick
        data = (await listeners[0].next_event("metric.update", timeout=5))["data"]
        MetricsSnapshot.model_validate(data)
        assert data["active_sessions"] == 2
        assert data["active_agents"] == 4 and data["connected_clients"] == 4
        assert data["actions_per_minute"] == 3.0
        assert data["tasks_by_status"] == {
            "pending": 1,
            "in_progress": 1,
            "completed": 2,
            "failed": 1,
            "cancelled": 0,
        }
        assert data["tasks_completed_last_hour"] == 2 and data["tasks_failed_last_hour"] == 1
        assert data["failure_rate"] == pytest.approx(1 / 3, abs=1e-3)
        assert 0.04 <= data["mean_task_duration_seconds"] < 10
        assert data["unread_messages"] == 2
        # 5 created + 7 updated tasks + 3 new + 1 read messages, in the last minute.
        assert data["events_per_second"] == pytest.approx(16 / 60, abs=1e-3)

        snapshot = (await http.get("/api/metrics")).json()
        assert set(snapshot) == set(data)
        assert snapshot["tasks_by_status"] == data["tasks_by_status"]

        await asyncio.sleep(0.9)
        computed = service.app.state.metrics.computed - computed_before
        # ~1.3 s at 0.3 s per tick: about 5 snapshots, not one per listener per tick.
        assert 2 <= computed <= 8
        for listener in listeners:
            await listener.close()
