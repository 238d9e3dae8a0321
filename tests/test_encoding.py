"""Whatever reaches a server-side publish is encodable: nothing can jam the fan-out or history."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from app.realtime.protocol import ensure_encodable
from app.server import Service
from tests.conftest import ClientFactory, free_port


def test_ensure_encodable_normalises_what_orjson_refuses() -> None:
    assert ensure_encodable({"a": 1, "b": [1.5, "x", None]}) == {"a": 1, "b": [1.5, "x", None]}
    assert ensure_encodable({"big": 2**70}) == {"big": float(2**70)}
    assert ensure_encodable({"set": {1}}) == {"set": "{1}"}
    deep: list[object] = []
    for _ in range(400):
        deep = [deep]
    assert ensure_encodable(deep) == {"unencodable": True, "type": "list"}


async def test_rest_refuses_integers_beyond_64_bits(service: Service) -> None:
    base = f"http://127.0.0.1:{service.settings.api_port}"
    async with httpx.AsyncClient(base_url=base) as http:
        body = '{"channel": "topics/n", "event": "note.big", "data": {"n": 1180591620717411303424}}'
        reply = await http.post(
            "/api/events", content=body, headers={"content-type": "application/json"}
        )
        assert reply.status_code == 422
        history = await http.get("/api/channels/topics/n/history")
        assert history.status_code == 200 and history.json()["publications"] == []


async def test_server_side_publish_of_odd_data_reaches_subscribers(
    service: Service, ws_client: ClientFactory
) -> None:
    client = await ws_client(service)
    await client.subscribe("topics/odd")
    await service.manager.publish("topics/odd", "note.odd", {"n": 2**70, "tags": {"a"}})
    event = await client.next_event("note.odd")
    assert event["data"] == {"n": float(2**70), "tags": "{'a'}"}
    history = await client.request({"type": "history", "channel": "topics/odd", "id": "h"})
    assert history["success"] and len(history["publications"]) == 1


def test_unreachable_database_at_start_is_a_clear_error() -> None:
    env = {
        **os.environ,
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nothing",
        "WS_PORT": str(free_port()),
        "API_PORT": str(free_port()),
        "DASHBOARD_PORT": str(free_port()),
    }
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "error: could not start" in done.stderr
    assert "Traceback" not in done.stderr
