"""docs/agents.md's REST workflow, run as written (bash and curl) against a real service.

Only the API's address changes (`API=…` is the block's first line). While the steps run, a
WebSocket client on `agents/coder-1` and `global` collects what the workflow emits, and the
board afterwards is checked: the claimed task completed with its result, the dependent ready,
the reservation released, the reviewer's inbox acknowledged.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import IN_CI, ClientFactory, ServiceFactory
from tests.databases import api

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "agents.md").read_text()


def workflow() -> str:
    for block in re.findall(r"```bash\n(.*?)```", DOC, re.S):
        if block.startswith("API=http://127.0.0.1:3847\n"):
            return block
    raise AssertionError("docs/agents.md has the REST workflow block")


async def test_the_rest_workflow_runs_as_written(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    if shutil.which("curl") is None:
        if IN_CI:
            pytest.fail("CI=true and curl is missing (.ci/run installs it)")
        pytest.skip("curl is not installed")
    service = await start_service()
    watcher = await ws_client(service)
    await watcher.subscribe("global")
    script = workflow().replace(
        "API=http://127.0.0.1:3847", f"API=http://127.0.0.1:{service.settings.api_port}", 1
    )
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, (out.decode(), err.decode())
    assert "claimed build-api under lease_" in out.decode()

    events = set()
    while True:
        try:
            events.add((await watcher.next_event(timeout=1))["event"])
        except TimeoutError:
            break
    assert {
        "task.created",
        "task.claimed",
        "reservation.created",
        "message.new",
        "task.completed",
        "task.ready",
        "reservation.released",
    } <= events, events

    async with api(service) as http:
        built = (await http.get("/api/tasks/build-api")).json()
        assert built["status"] == "completed" and built["result"] == {"pr": 42}
        ready = (await http.get("/api/tasks", params={"ready": "true"})).json()["items"]
        assert [t["id"] for t in ready] == ["test-api"]
        held = (await http.get("/api/reservations")).json()["items"]
        assert held == []
        position = (await http.post("/api/agents/reviewer/inbox/ack", json={"up_to": 0})).json()
        assert position["acked"] == position["last_seq"] == 1
