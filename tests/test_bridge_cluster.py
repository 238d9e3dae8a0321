"""With a shared broker (Redis), one bridge per cluster publishes: each event reaches a client
once, whichever node it is on and whichever node wrote the row."""

from __future__ import annotations

import asyncio
import secrets

import asyncpg
import pytest

from tests.conftest import ClientFactory, ServiceFactory
from tests.databases import api, data_settings, postgres_database
from tests.test_bridge import collect
from tests.test_bridge_reconnect import _plain

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def test_one_leader_publishes_for_the_cluster(
    start_service: ServiceFactory, ws_client: ClientFactory, postgres_url: str, redis_url: str
) -> None:
    async with postgres_database(postgres_url) as url:
        shared = {
            "broker": "redis",
            "redis_url": redis_url,
            "broker_prefix": f"t{secrets.token_hex(4)}",
        }
        first = await start_service(**data_settings(url, **shared))
        second = await start_service(**data_settings(url, migrate_on_start=False, **shared))
        bridges = [first.app.state.bridge, second.app.state.bridge]
        assert all(b.exclusive for b in bridges)
        for _ in range(200):
            if sum(b.leader for b in bridges) == 1:
                break
            await asyncio.sleep(0.05)
        assert sum(b.leader for b in bridges) == 1

        watchers = []
        for service in (first, second):
            client = await ws_client(service)
            await client.subscribe("global")
            watchers.append(client)
        async with api(second) as http:
            task = (await http.post("/api/tasks", json={"title": "once"})).json()
        for client in watchers:
            frames = await collect(client, 1)
            assert frames[0]["data"]["task_id"] == task["id"]
            await client.no_frame(0.5)  # not once per node

        # The leader loses its connection: leadership is re-established, still one publisher.
        leader = next(b for b in bridges if b.leader)
        admin = await asyncpg.connect(_plain(url))
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = $1",
                leader.application_name,
            )
        finally:
            await admin.close()
        for _ in range(300):
            await asyncio.sleep(0.05)
            if sum(b.leader for b in bridges) == 1 and all(b.listening for b in bridges):
                break
        assert sum(b.leader for b in bridges) == 1
        async with api(first) as http:
            task = (await http.post("/api/tasks", json={"title": "still once"})).json()
        for client in watchers:
            frames = await collect(client, 1)
            assert frames[0]["data"]["task_id"] == task["id"]
            await client.no_frame(0.5)


async def test_one_metric_update_per_interval_for_the_cluster(
    start_service: ServiceFactory, ws_client: ClientFactory, postgres_url: str, redis_url: str
) -> None:
    """Every node computes snapshots, but only the bridge's leader publishes them."""
    async with postgres_database(postgres_url) as url:
        shared = {
            "broker": "redis",
            "redis_url": redis_url,
            "broker_prefix": f"t{secrets.token_hex(4)}",
            "metrics_interval": 0.5,
        }
        first = await start_service(**data_settings(url, **shared))
        second = await start_service(**data_settings(url, migrate_on_start=False, **shared))
        bridges = [first.app.state.bridge, second.app.state.bridge]
        for _ in range(200):
            if sum(b.leader for b in bridges) == 1:
                break
            await asyncio.sleep(0.05)
        watchers = [await ws_client(service) for service in (first, second)]
        for client in watchers:
            await client.subscribe("metrics")
        await asyncio.sleep(2.6)
        for client in watchers:
            updates = []
            while True:
                try:
                    frame = await client.recv(0.05)
                except TimeoutError:
                    break
                if frame.get("event") == "metric.update":
                    updates.append(frame)
            # About five ticks of 0.5 s: one stream of updates, not one per node.
            assert 3 <= len(updates) <= 7, len(updates)
            assert [u["offset"] for u in updates] == sorted({u["offset"] for u in updates})
        published = [s.app.state.metrics.published for s in (first, second)]
        assert min(published) == 0 and max(published) >= 3, published
