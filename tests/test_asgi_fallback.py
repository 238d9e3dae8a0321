"""The WebSocket surface under an ASGI server other than uvicorn: the QueueSink path.

Starlette's TestClient is not uvicorn's sansio protocol, so each connection gets a `QueueSink`
(a bounded deque and a writer task) instead of direct transport writes. The surface also runs
the application's lifespan by itself, as it must under any server that sends one.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.websockets import WebSocketDisconnect

from app.core.config import Settings
from app.main import create_app
from app.realtime.connection import QueueSink
from app.realtime.manager import ConnectionManager

with warnings.catch_warnings():
    # Starlette's TestClient works over httpx but warns, once at import, that it prefers httpx2;
    # this module is its only user and needs no second HTTP client for that.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient


@pytest.fixture
def surface_client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'asgi.db'}",
        log_format="text",
        outbound_queue_messages=50,
        history_topics_size=0,
    )
    app = create_app(settings)
    with TestClient(app.state.surfaces["ws"]) as client:
        yield client


def manager_of(client: TestClient) -> ConnectionManager:
    manager: ConnectionManager = client.app.root.state.manager  # type: ignore[attr-defined]
    return manager


def test_lifespan_runs_through_the_surface(surface_client: TestClient) -> None:
    response = surface_client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["type"] == "websocket" and body["connectedClients"] == 0


def test_connect_subscribe_publish_receive(surface_client: TestClient) -> None:
    with (
        surface_client.websocket_connect("/?agent_id=alpha") as a,
        surface_client.websocket_connect("/ws") as b,
    ):
        assert a.receive_json()["type"] == "connected"
        assert b.receive_json()["type"] == "connected"
        sinks = [c.sink for c in manager_of(surface_client).connections.values()]
        assert len(sinks) == 2 and all(isinstance(s, QueueSink) for s in sinks)

        b.send_json({"type": "subscribe", "channel": "topics/x", "id": "s"})
        ack = b.receive_json()
        assert ack["type"] == "ack" and ack["id"] == "s"
        for n in range(20):
            message = {"type": "publish", "channel": "topics/x", "event": "x.y", "data": {"n": n}}
            a.send_json({**message, "id": n})
            assert a.receive_json()["id"] == n
        events = [b.receive_json() for _ in range(20)]
        assert [e["data"]["n"] for e in events] == list(range(20))
        assert all(e["channel"] == "topics/x" and e["event"] == "x.y" for e in events)

        a.send_json({"type": "ping"})
        assert a.receive_json()["type"] == "pong"
        a.send_text("{bad")
        assert a.receive_json()["code"] == "INVALID_JSON"

        response = surface_client.get("/health")
        assert response.json()["channelStats"] == {"topics/x": 1}


def test_queue_sink_overflow_closes_with_3008(surface_client: TestClient) -> None:
    """OUTBOUND_QUEUE_MESSAGES=50: publishing 500 at once to an unread client overflows it."""
    manager = manager_of(surface_client)
    with surface_client.websocket_connect("/") as ws:
        ws.receive_json()
        ws.send_json({"type": "subscribe", "channel": "topics/flood", "id": "s"})
        ws.receive_json()

        async def flood() -> None:
            # In one go on the server's loop: the writer task gets no chance to drain between.
            for n in range(500):
                await manager.publish("topics/flood", "x.y", {"n": n})

        assert surface_client.portal is not None
        surface_client.portal.call(flood)
        received: list[dict[str, Any]] = []
        with pytest.raises(WebSocketDisconnect) as info:
            while True:
                received.append(ws.receive_json())
        assert info.value.code == 3008
        assert len(received) < 500
    assert manager.stats.slow_consumers == 1


def test_other_paths_are_refused(surface_client: TestClient) -> None:
    with pytest.raises(WebSocketDisconnect) as info, surface_client.websocket_connect("/nope"):
        pass
    assert info.value.code == 1008
