"""GET /api/metrics/history: the recent snapshots the dashboard's chart opens with."""

from __future__ import annotations

import asyncio
from datetime import datetime

import httpx

from app.metrics import SERIES_WINDOW, MetricsTask
from tests.conftest import ServiceFactory


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


async def test_history_holds_the_last_snapshots_oldest_first(
    start_service: ServiceFactory,
) -> None:
    service = await start_service(metrics_interval=0.2)
    base = f"http://127.0.0.1:{service.settings.api_port}"
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        await http.post("/api/tasks", json={"title": "counted"})
        for _ in range(50):  # polling, not sleeping a fixed time
            history = (await http.get("/api/metrics/history")).json()
            if len(history["items"]) >= 4:
                break
            await asyncio.sleep(0.1)
        latest = (await http.get("/api/metrics")).json()
    assert history["interval"] == 0.2 and history["window_seconds"] == SERIES_WINDOW
    items = history["items"]
    assert len(items) >= 4
    stamps = [when(item["timestamp"]) for item in items]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert when(history["timestamp"]) >= stamps[-1]
    assert set(items[-1]) == set(latest)  # the same shape as GET /api/metrics
    assert items[-1]["tasks_by_status"]["pending"] == 1


async def test_history_is_bounded_to_its_window(start_service: ServiceFactory) -> None:
    service = await start_service()
    state = service.app.state
    # One snapshot per 300 s: a ten-minute window holds two.
    metrics = MetricsTask(state.engine, state.manager, interval=300)
    for _ in range(4):
        await metrics.refresh()
    assert len(metrics.series()) == 2
    assert metrics.series()[-1] is await metrics.latest()
