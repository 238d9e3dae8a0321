"""The bench's Node.js `ws` reference speaks the bare-websockets reference's protocol.

One client script runs against both baselines as the bench starts them (bench/servers.py:
`run_server`, unpinned): bench/reference_server.py and bench/node/reference_server.mjs must
answer it frame for frame the same (timestamps and client ids aside) — `connected`, ack only
for an id and after the fan-out, pong, INVALID_MESSAGE, event frames that begin with
`{"channel"` (the load generator reads them so). And ours's bench rows carry a ratio to each.

The node server needs node and bench/node/node_modules (`npm ci` there): skipped locally without
them; under CI=true they are installed with `npm ci`, or the test fails.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from bench.loadgen import NODE_DIR, ensure_node
from bench.report import add_ratios, table
from bench.servers import NODE_WS, OURS, REFERENCE, Pinning, run_server
from tests.conftest import IN_CI

Frames = list[dict[str, Any]]


def _require_node() -> None:
    reason = None
    if shutil.which("node") is None:
        reason = "node is not installed (apt-get install nodejs)"
    elif not (NODE_DIR / "node_modules" / "ws" / "package.json").exists():
        if IN_CI:
            ensure_node()  # npm ci in bench/node; an error fails the test
            return
        reason = "bench/node/node_modules is missing: (cd bench/node && npm ci)"
    if reason:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)


async def _recv(ws: ClientConnection) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), 5)
    assert isinstance(raw, str), "text frames"
    frame = orjson.loads(raw)
    if "channel" in frame and "event" in frame:
        assert raw.startswith('{"channel"'), raw
    stamp = frame.pop("timestamp")
    assert isinstance(stamp, int) and abs(stamp - time.time() * 1000) < 60_000, stamp
    if "client_id" in frame:
        assert re.fullmatch(r"ws_[0-9a-f]{12}", frame.pop("client_id")), frame
    return dict(frame)


async def _send(ws: ClientConnection, message: Any) -> None:
    await ws.send(message if isinstance(message, str) else orjson.dumps(message).decode())


async def _conversation(url: str) -> tuple[Frames, Frames]:
    """Two clients, a publisher `a` and a subscriber `b`: what each received, in order."""
    got_a: Frames = []
    got_b: Frames = []
    async with (
        websockets.connect(url, compression=None) as a,
        websockets.connect(url, compression=None) as b,
    ):

        async def expect(ws: ClientConnection, into: Frames, count: int) -> None:
            for _ in range(count):
                into.append(await _recv(ws))

        await expect(a, got_a, 1)
        await expect(b, got_b, 1)
        await _send(b, {"type": "subscribe", "channel": "c", "id": "s1"})
        await expect(b, got_b, 1)
        await _send(a, {"type": "subscribe", "channel": "c"})  # no id: no ack
        await _send(a, {"type": "ping", "id": 3})
        await expect(a, got_a, 1)
        await _send(a, {"type": "publish", "channel": "c", "event": "e", "data": {"x": 1}, "id": 7})
        await expect(a, got_a, 2)  # the event, then the ack
        await expect(b, got_b, 1)
        await _send(a, {"type": "publish", "channel": "c", "event": "e"})
        await _send(a, {"type": "ping"})
        await expect(a, got_a, 2)
        await expect(b, got_b, 1)
        for bad in ("nope", "[1]", {"type": "publish", "channel": "c", "id": "q"}, {"type": 1}):
            await _send(a, bad)
        await expect(a, got_a, 4)
        await _send(b, {"type": "unsubscribe", "channel": "c", "id": None})  # null id: no ack
        await _send(b, {"type": "ping"})
        await expect(b, got_b, 1)  # the unsubscribe is done before a publishes again
        await _send(a, {"type": "publish", "channel": "c", "event": "e2", "id": 8})
        await expect(a, got_a, 2)
        await _send(b, {"type": "ping"})
        await expect(b, got_b, 1)  # the pong: nothing of e2 came before it
    return got_a, got_b


EXPECTED_A: Frames = [
    {"type": "connected"},
    {"type": "pong"},
    {"channel": "c", "event": "e", "data": {"x": 1}},
    {"type": "ack", "id": 7, "success": True, "channel": "c"},
    {"channel": "c", "event": "e", "data": None},
    {"type": "pong"},
    *[{"error": "Invalid message", "code": "INVALID_MESSAGE", "id": None}] * 2,
    {"error": "Invalid message", "code": "INVALID_MESSAGE", "id": "q"},
    {"error": "Invalid message", "code": "INVALID_MESSAGE", "id": None},
    {"channel": "c", "event": "e2", "data": None},
    {"type": "ack", "id": 8, "success": True, "channel": "c"},
]
EXPECTED_B: Frames = [
    {"type": "connected"},
    {"type": "ack", "id": "s1", "success": True, "channel": "c"},
    {"channel": "c", "event": "e", "data": {"x": 1}},
    {"channel": "c", "event": "e", "data": None},
    {"type": "pong"},
    {"type": "pong"},
]


@pytest.mark.parametrize("server", [REFERENCE, NODE_WS])
async def test_both_references_answer_the_same_protocol(server: str, tmp_path: Path) -> None:
    if server == NODE_WS:
        _require_node()
    async with run_server(server, tmp_path, Pinning(), ready_timeout=20) as running:
        got_a, got_b = await _conversation(running.ws_url)
    assert got_a == EXPECTED_A
    assert got_b == EXPECTED_B


def test_ours_is_compared_to_each_reference_measured() -> None:
    def row(server: str, delivered: float, **extra: Any) -> dict[str, Any]:
        return {"scenario": "channels-1000", "server": server, "delivered_per_s": delivered} | extra

    best = {
        REFERENCE: row(REFERENCE, 10_000.0),
        NODE_WS: row(NODE_WS, 40_000.0),
        OURS: row(OURS, 30_000.0),
    }
    add_ratios(best)
    assert best[OURS]["ratio"] == {"delivered_per_s": 3.0}
    assert best[OURS]["ratio_node_ws"] == {"delivered_per_s": 0.75}
    assert "ratio" not in best[NODE_WS]
    rendered = table(list(best.values()))
    assert "| channels-1000 | node |" in rendered
    assert "del/s ×3.00 | del/s ×0.75 |" in rendered

    best = {NODE_WS: row(NODE_WS, 0.0, failed="boom"), OURS: row(OURS, 30_000.0)}
    add_ratios(best)  # no reference measured cleanly: no ratio at all
    assert "ratio" not in best[OURS] and "ratio_node_ws" not in best[OURS]
