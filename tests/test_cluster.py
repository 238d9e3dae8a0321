"""Many nodes: real `context-manager serve` processes sharing Redis (or PostgreSQL alone).

Each node is a subprocess on its own ports (so one can be SIGKILLed), with a broker prefix of
the test's own so that parallel tests never share channels. The Redis-restart test runs a
redis-server of its own on a free port: the shared one on 6379 is never touched.

Figures (cross-node latency, reconnect time after a Redis restart, SIGKILL detection time) are
printed; run with `-s` to see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any, BinaryIO

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import IN_CI, Client, free_port

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[1]
# Fast heartbeats so a dead node is noticed in about two seconds (defaults: 5 s / 15 s).
HEARTBEAT = 0.3
NODE_TTL = 1.5
DETECTION_BOUND = NODE_TTL + HEARTBEAT + 8.0  # generous: two busy cores


@dataclass
class Node:
    name: str
    ws_port: int
    api_port: int
    dashboard_port: int
    process: asyncio.subprocess.Process
    log: Path
    log_file: BinaryIO

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/"

    async def get(self, path: str, surface: str = "ws") -> httpx.Response:
        port = {"ws": self.ws_port, "api": self.api_port, "dashboard": self.dashboard_port}
        async with httpx.AsyncClient(timeout=5) as client:
            return await client.get(f"http://127.0.0.1:{port[surface]}{path}")

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self.log_file.close()
        return self.process.returncode


@dataclass
class Nodes:
    """Start and always stop node processes for one test."""

    tmp_path: Path
    env: dict[str, str]
    started: list[Node] = field(default_factory=list)

    async def start(self, name: str, **env: str) -> Node:
        ws_port, api_port, dashboard_port = free_port(), free_port(), free_port()
        settings_env = {
            **self.env,
            "NODE_ID": name,
            "HOST": "127.0.0.1",
            "WS_PORT": str(ws_port),
            "API_PORT": str(api_port),
            "DASHBOARD_PORT": str(dashboard_port),
            "LOG_FORMAT": "json",
            "NODE_HEARTBEAT_INTERVAL": str(HEARTBEAT),
            "NODE_TTL": str(NODE_TTL),
            "RECONNECT_SPREAD": "1",
            # The tests publish in bursts on purpose; rate limits are tested elsewhere.
            "PUBLISH_RATE": "100000",
            "PUBLISH_BURST": "100000",
            "MESSAGE_RATE": "100000",
            "MESSAGE_BURST": "100000",
            **env,
        }
        settings_env.setdefault(
            "DATABASE_URL", f"sqlite+aiosqlite:///{self.tmp_path / f'{name}.db'}"
        )
        log = self.tmp_path / f"{name}.log"
        log_file = log.open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            cwd=self.tmp_path,  # no stray .env
            env=_environment(settings_env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_file,
        )
        node = Node(name, ws_port, api_port, dashboard_port, process, log, log_file)
        self.started.append(node)
        await wait_ready(node)
        return node

    async def start_many(self, *names: str, **env: str) -> list[Node]:
        return list(await asyncio.gather(*(self.start(name, **env) for name in names)))

    async def close(self) -> None:
        await asyncio.gather(*(node.stop(signal.SIGKILL, 5) for node in self.started))


def _environment(settings_env: dict[str, str]) -> dict[str, str]:
    """The parent's environment without anything Settings would read, plus `settings_env`."""
    from app.core.config import Settings

    fields = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in fields}
    env.update(settings_env)
    return env


async def wait_ready(node: Node, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.process.returncode is not None:
            raise AssertionError(f"{node.name} exited {node.process.returncode}:\n{node.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if (await node.get("/readyz")).status_code == 200:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{node.name} not ready after {timeout}s:\n{node.tail()}")


async def eventually(check: Any, timeout: float = 15.0, what: str = "") -> Any:
    """Poll an async predicate until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what or check}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def nodes(tmp_path: Path, redis_url: str) -> AsyncIterator[Nodes]:
    group = Nodes(
        tmp_path,
        {"BROKER": "redis", "REDIS_URL": redis_url, "BROKER_PREFIX": f"t{secrets.token_hex(5)}"},
    )
    try:
        yield group
    finally:
        await group.close()
        await _drop_prefix(redis_url, group.env["BROKER_PREFIX"])


async def _drop_prefix(redis_url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


class Clients:
    """WebSocket clients to any URL, closed at the end of the test."""

    def __init__(self) -> None:
        self.open: list[Client] = []

    async def __call__(self, url: str, **query: str) -> Client:
        from urllib.parse import urlencode

        full = f"{url}?{urlencode(query)}" if query else url
        ws = await connect(full, max_size=None, open_timeout=10)
        hello = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        assert hello["type"] == "connected"
        client = Client(ws, hello)
        self.open.append(client)
        return client

    async def close(self) -> None:
        # Abort rather than close: a client holding unread events would wait out its close
        # timeout behind them (the nodes are stopped right after anyway).
        for client in self.open:
            client.ws.transport.abort()


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    group = Clients()
    try:
        yield group
    finally:
        await group.close()


async def collect(client: Client, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    events = []
    while len(events) < count:
        events.append(await client.next_event(timeout=timeout))
    return events


async def publish_ws(client: Client, channel: str, data: dict[str, Any], rid: str) -> int:
    reply = await client.request(
        {"type": "publish", "channel": channel, "event": "note.added", "data": data, "id": rid}
    )
    assert reply.get("success") is True, reply
    offset: int = reply["offset"]
    return offset


# --- tests -----------------------------------------------------------------------------------


async def test_three_nodes_deliver_each_publication_once_in_order(
    nodes: Nodes, clients: Clients
) -> None:
    a, b, c = await nodes.start_many("n1", "n2", "n3")
    subscribers = [await clients(node.ws) for node in (a, b, c) for _ in range(2)]
    for subscriber in subscribers:
        await subscriber.subscribe("topics/fan")
    publisher = await clients(a.ws)  # not subscribed: acks only

    async def over_websocket() -> None:
        for n in range(100):
            await publish_ws(publisher, "topics/fan", {"via": "ws", "n": n}, f"p{n}")

    async def over_rest() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            for n in range(50):
                response = await http.post(
                    f"http://127.0.0.1:{b.api_port}/api/events",
                    json={
                        "channel": "topics/fan",
                        "event": "note.added",
                        "data": {"via": "rest", "n": n},
                    },
                )
                assert response.status_code in (200, 201), response.text

    await asyncio.gather(over_websocket(), over_rest())
    for subscriber in subscribers:
        events = await collect(subscriber, 150)
        assert [e["offset"] for e in events] == list(range(1, 151))
        assert len({e["epoch"] for e in events}) == 1
        for via, count in (("ws", 100), ("rest", 50)):
            assert [e["data"]["n"] for e in events if e["data"]["via"] == via] == list(range(count))
        await subscriber.no_frame(0.2)

    # Cross-node latency: published on n1, received on n3.
    listener = subscribers[-1]
    latencies = []
    for n in range(200):
        started = time.perf_counter()
        await publisher.send(
            {"type": "publish", "channel": "topics/fan", "event": "note.added", "data": {"n": n}}
        )
        await listener.next_event()
        latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    print(
        f"\ncross-node latency n1->n3 (ms): p50={statistics.median(latencies):.2f} "
        f"p99={latencies[int(len(latencies) * 0.99) - 1]:.2f} max={latencies[-1]:.2f}"
    )

    stats = (await c.get("/stats")).json()
    assert stats["broker"] == {"kind": "redis", "healthy": True}
    assert stats["cluster"]["nodes"] == ["n1", "n2", "n3"]


async def test_presence_across_nodes(nodes: Nodes, clients: Clients) -> None:
    a, b, c = await nodes.start_many("n1", "n2", "n3")
    observer = await clients(c.ws)
    await observer.subscribe("agents/roamer")

    first = await clients(a.ws, agent_id="roamer", session_id="s1")
    connected = await observer.next_event("agent.connected")
    assert connected["data"]["agent_id"] == "roamer" and connected["data"]["node_id"] == "n1"
    second = await clients(b.ws, agent_id="roamer")
    for client in (first, second):
        await client.subscribe("topics/room")
    await observer.subscribe("topics/room")

    presence = await observer.request({"type": "presence", "channel": "topics/room", "id": "p"})
    members = presence["presence"]
    assert {m["node_id"] for m in members.values()} == {"n1", "n2", "n3"}
    assert members[first.client_id]["agent_id"] == "roamer"
    assert members[first.client_id]["session_id"] == "s1"
    stats = await observer.request({"type": "presence_stats", "channel": "topics/room", "id": "ps"})
    assert (stats["num_clients"], stats["num_agents"]) == (3, 1)

    async def cluster_agents() -> Any:
        view = (await c.get("/stats")).json()["cluster"]
        return view if view["agents_online"] == 1 else None

    await eventually(cluster_agents, what="the cluster view counts the agent")

    # Its first connection closes: still online elsewhere, nothing is announced.
    await first.close()
    await observer.no_frame(0.8)
    await second.close()
    gone = await observer.next_event("agent.disconnected")
    assert gone["data"]["agent_id"] == "roamer" and gone["data"]["node_id"] == "n2"
    await observer.no_frame(0.5)

    async def room_left() -> Any:
        reply = await observer.request(
            {"type": "presence_stats", "channel": "topics/room", "id": "ps2"}
        )
        return reply["num_clients"] == 1

    await eventually(room_left, what="closed clients leave channel presence")


async def test_sigkilled_node_reports_its_agents_gone(nodes: Nodes, clients: Clients) -> None:
    a, b = await nodes.start_many("n1", "n2")
    observer = await clients(a.ws)
    await observer.subscribe("global")
    doomed = await clients(b.ws, agent_id="doomed")
    await doomed.subscribe("topics/d")
    assert (await observer.next_event("agent.connected"))["data"]["agent_id"] == "doomed"

    killed_at = time.monotonic()
    await b.stop(signal.SIGKILL)
    gone = await observer.next_event("agent.disconnected", timeout=DETECTION_BOUND)
    detected = time.monotonic() - killed_at
    print(
        f"\nSIGKILL detection: agent.disconnected after {detected:.2f} s "
        f"(NODE_TTL {NODE_TTL} s + heartbeat {HEARTBEAT} s)"
    )
    assert gone["data"] == {
        "agent_id": "doomed",
        "session_id": None,
        "client_id": None,
        "node_id": "n2",
        "close_code": None,
        "reason": "node_lost",
    }
    await observer.no_frame(1.0)  # announced once, by one surviving node
    members = await observer.request({"type": "presence", "channel": "topics/d", "id": "p"})
    assert members["presence"] == {}
    assert (await a.get("/stats")).json()["cluster"]["nodes"] == ["n1"]


@dataclass
class RedisServer:
    port: int
    workdir: Path
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = await asyncio.create_subprocess_exec(
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            assert time.monotonic() < deadline, "redis-server did not start"
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


async def test_redis_restart_every_node_reconnects_and_delivers(
    tmp_path: Path, redis_url: str, clients: Clients
) -> None:
    if not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        if IN_CI:
            pytest.fail("CI=true and redis-server is not installed")
        pytest.skip("redis-server is not installed")
    server = RedisServer(free_port(), tmp_path)
    await server.start()
    group = Nodes(tmp_path, {"BROKER": "redis", "REDIS_URL": server.url, "BROKER_PREFIX": "cm"})
    try:
        cluster = await group.start_many("n1", "n2", "n3")
        listeners = [await clients(node.ws) for node in cluster]
        for listener in listeners:
            await listener.subscribe("topics/r")
        # Publishers apart from listeners: an event may overtake its own publish's ack.
        first_publisher, last_publisher = await clients(cluster[0].ws), await clients(cluster[2].ws)
        await publish_ws(first_publisher, "topics/r", {"n": 0}, "before")
        before = [(await listener.next_event())["epoch"] for listener in listeners]

        await server.stop()

        async def all_degraded() -> bool:
            bodies = [(await node.get("/health")).json() for node in cluster]
            ready = [(await node.get("/readyz")).status_code for node in cluster]
            return all(b["status"] == "degraded" for b in bodies) and ready == [503] * 3

        await eventually(all_degraded, what="every node reports degraded while Redis is down")
        # Publishing fails loudly meanwhile; nothing is silently dropped.
        reply = await first_publisher.request(
            {"type": "publish", "channel": "topics/r", "event": "note.added", "data": {}, "id": "x"}
        )
        assert reply.get("code") == "INTERNAL" and "Broker unavailable" in reply["error"]

        restarted_at = time.monotonic()
        await server.start()

        async def all_healthy() -> bool:
            bodies = [(await node.get("/health")).json() for node in cluster]
            return all(b["status"] == "healthy" for b in bodies)

        await eventually(all_healthy, timeout=30, what="every node reconnects")
        print(f"\nRedis restart: 3 nodes healthy {time.monotonic() - restarted_at:.2f} s later")
        for node in cluster:
            assert (await node.get("/readyz")).status_code == 200
            assert (await node.get("/stats")).json()["broker"]["healthy"] is True

        # Every node re-subscribed: a publication from any node reaches every listener.
        await publish_ws(last_publisher, "topics/r", {"n": 1}, "after")
        for listener, epoch in zip(listeners, before, strict=True):
            event = await listener.next_event(timeout=10)
            assert event["data"] == {"n": 1}
            # Redis lost everything: a new epoch tells recovering clients to reload.
            assert event["offset"] == 1 and event["epoch"] != epoch
        metrics = (await cluster[0].get("/metrics")).text
        assert re.search(r"^cm_broker_reconnects_total 1\.0$", metrics, re.M), metrics
    finally:
        await group.close()
        await server.stop()


async def test_recovery_across_two_nodes(nodes: Nodes, clients: Clients) -> None:
    a, b = await nodes.start_many("n1", "n2")
    subscriber = await clients(a.ws)
    await subscriber.subscribe("agents/r1")
    publisher = await clients(b.ws)
    for n in range(5):
        await publish_ws(publisher, "agents/r1", {"seq": n}, f"w{n}")
    seen = await collect(subscriber, 5)
    position = {"offset": seen[-1]["offset"], "epoch": seen[-1]["epoch"]}
    await subscriber.close()

    for n in range(5, 505):
        await publisher.send(
            {"type": "publish", "channel": "agents/r1", "event": "note.added", "data": {"seq": n}}
        )
    # The last publish's ack means all 500 are in the stream.
    await publish_ws(publisher, "agents/r1", {"seq": 505}, "last")

    again = await clients(a.ws)
    reply = await again.request(
        {"type": "subscribe", "channel": "agents/r1", "since": position, "id": "re"}
    )
    assert reply["recovered"] is True and reply["replayed"] == 501
    replay = await collect(again, 501)
    assert [e["data"]["seq"] for e in replay] == list(range(5, 506))
    assert [e["offset"] for e in replay] == list(range(6, 507))
    await publish_ws(publisher, "agents/r1", {"seq": 506}, "live")
    live = await again.next_event()
    assert live["offset"] == 507
    await again.no_frame(0.3)


async def test_postgres_only_cluster(
    tmp_path: Path, migrated_postgres_url: str, clients: Clients
) -> None:
    group = Nodes(
        tmp_path,
        {
            "BROKER": "postgres",
            "DATABASE_URL": migrated_postgres_url,
            "BROKER_PREFIX": f"t{secrets.token_hex(5)}",
        },
    )
    try:
        a, b = await group.start_many("p1", "p2")
        observer = await clients(b.ws)
        await observer.subscribe("global")
        await observer.subscribe("topics/pg")
        sender = await clients(a.ws, agent_id="pg-agent")
        connected = await observer.next_event("agent.connected")
        assert connected["data"]["node_id"] == "p1"

        blob = "y" * 20_000  # beyond NOTIFY's 8000 bytes
        for n in range(30):
            data = {"n": n, "blob": blob} if n % 10 == 0 else {"n": n}
            await publish_ws(sender, "topics/pg", data, f"g{n}")
        events = await collect(observer, 30)
        assert [e["data"]["n"] for e in events] == list(range(30))
        assert [e["offset"] for e in events] == list(range(1, 31))
        assert events[0]["data"]["blob"] == blob

        await sender.close()
        gone = await observer.next_event("agent.disconnected")
        assert gone["data"]["agent_id"] == "pg-agent"

        # A node killed outright: its agent is swept by the survivor.
        doomed = await clients(a.ws, agent_id="pg-doomed")
        assert (await observer.next_event("agent.connected"))["data"]["agent_id"] == "pg-doomed"
        await a.stop(signal.SIGKILL)
        gone = await observer.next_event("agent.disconnected", timeout=DETECTION_BOUND)
        assert gone["data"]["agent_id"] == "pg-doomed" and gone["data"]["reason"] == "node_lost"
        del doomed
    finally:
        await group.close()


def _nginx() -> str:
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None:
        if IN_CI:
            pytest.fail("CI=true and nginx is not installed (.ci/run installs it)")
        pytest.skip("nginx is not installed")
    return binary


@dataclass
class Balancer:
    ws_port: int
    api_port: int
    process: asyncio.subprocess.Process

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/"


async def start_balancer(run_dir: Path, backends: list[Node]) -> Balancer:
    """nginx rendered from deploy/nginx.conf.template, as scripts/cluster.sh renders it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ws_port, api_port, dashboard_port = free_port(), free_port(), free_port()

    def servers(attr: str) -> str:
        return " ".join(f"server 127.0.0.1:{getattr(node, attr)};" for node in backends)

    template = Template((ROOT / "deploy" / "nginx.conf.template").read_text())
    config = template.safe_substitute(
        LB_RUN_DIR=str(run_dir),
        LB_LISTEN_WS=f"127.0.0.1:{ws_port}",
        LB_LISTEN_API=f"127.0.0.1:{api_port}",
        LB_LISTEN_DASHBOARD=f"127.0.0.1:{dashboard_port}",
        LB_WS_SERVERS=servers("ws_port"),
        LB_API_SERVERS=servers("api_port"),
        LB_DASHBOARD_SERVERS=servers("dashboard_port"),
    )
    path = run_dir / "nginx.conf"
    path.write_text(config)
    process = await asyncio.create_subprocess_exec(
        _nginx(), "-p", str(run_dir), "-c", str(path), "-e", str(run_dir / "error.log"),
        "-g", "daemon off;",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    balancer = Balancer(ws_port, api_port, process)
    deadline = time.monotonic() + 10
    while True:
        assert process.returncode is None, (run_dir / "error.log").read_text()
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient(timeout=2) as http:
                if (await http.get(f"http://127.0.0.1:{ws_port}/readyz")).status_code == 200:
                    return balancer
        assert time.monotonic() < deadline, "nginx did not come up"
        await asyncio.sleep(0.05)


async def test_load_balancer_path_and_rolling_restart(
    nodes: Nodes, clients: Clients, tmp_path: Path
) -> None:
    _nginx()
    a, b = await nodes.start_many("n1", "n2")
    balancer = await start_balancer(tmp_path / "nginx", [a, b])
    try:
        through = [await clients(balancer.ws) for _ in range(4)]
        for client in through:
            await client.subscribe("sessions/lb")
        counts = [(await node.get("/stats")).json()["connections"]["current"] for node in (a, b)]
        assert sum(counts) == 4 and min(counts) >= 1, counts  # least_conn spread them

        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.post(
                f"http://127.0.0.1:{balancer.api_port}/api/events",
                json={"channel": "sessions/lb", "event": "note.added", "data": {"n": 0}},
            )
            assert response.status_code in (200, 201), response.text
            assert (
                await http.get(f"http://127.0.0.1:{balancer.api_port}/readyz")
            ).status_code == 200
        positions = []
        for client in through:
            event = await client.next_event()
            assert event["data"] == {"n": 0}
            positions.append({"offset": event["offset"], "epoch": event["epoch"]})

        # Rolling restart of n1: its clients are told to come back later, with a jittered hint.
        on_a = [c for c in through if await _served_by(c, a)]
        assert on_a
        stopping = asyncio.create_task(a.stop(signal.SIGTERM))
        for client in on_a:
            with pytest.raises(ConnectionClosed) as closed:
                await client.recv(timeout=15)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
            match = re.fullmatch(r"reconnect:(\d+)", closed.value.rcvd.reason)
            assert match and 0 <= int(match.group(1)) <= 1000
        assert await stopping == 0  # exits cleanly

        survivor = next(c for c in through if c not in on_a)
        for n in range(1, 21):
            await publish_ws(survivor, "sessions/lb", {"n": n}, f"r{n}")
        # Back through the balancer (now only n2 answers), recovering what was missed.
        for client in on_a:
            index = through.index(client)
            back = await clients(balancer.ws)
            reply = await back.request(
                {
                    "type": "subscribe",
                    "channel": "sessions/lb",
                    "since": positions[index],
                    "id": "again",
                }
            )
            assert reply["recovered"] is True and reply["replayed"] == 20
            assert [e["data"]["n"] for e in await collect(back, 20)] == list(range(1, 21))
    finally:
        if balancer.process.returncode is None:
            balancer.process.terminate()
            await balancer.process.wait()


async def _served_by(client: Client, node: Node) -> bool:
    """Whether `client` is connected to `node` (per the node's channel presence)."""
    reply = await client.request({"type": "presence", "channel": "sessions/lb", "id": "who"})
    return bool(reply["presence"][client.client_id]["node_id"] == node.name)
