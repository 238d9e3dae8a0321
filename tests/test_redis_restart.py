"""Acknowledged publications across a restart of a Redis without persistence, on two nodes.

A redis-server of the test's own on a private port (`--save "" --appendonly no`: a restart
loses everything), two `context-manager serve` nodes on it, a publisher through each node that
retries what is refused, subscribers on both nodes. `SHUTDOWN NOSAVE` at ~1,000 acks, Redis
back 3 s later. What must hold:

- every publication acknowledged after Redis came back reaches every subscriber of every node,
  in offset order, none twice — whichever node published it and whenever each node's pub/sub
  link came back (the slower node catches up from the new epoch's history, from offset 0);
- every subscriber is told, before the new epoch's first event, that the old epoch may have
  lost publications: an `unrecovered` frame carrying the new epoch (docs/protocol.md).

The publications acknowledged just before the shutdown and gone with Redis's memory are the
loss the notice is about (docs/delivery.md); the test prints how many there were.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from context_manager_client import Backoff, RealtimeClient
from context_manager_client.realtime import Event, Recovery
from redis.exceptions import RedisError

from tests.conftest import IN_CI, Client, free_port
from tests.test_cluster import Clients, Node, Nodes, RedisServer

pytestmark = pytest.mark.timeout(90)

CHANNEL = "topics/redis-test"
PER_PUBLISHER = 1500
SHUTDOWN_AT = 1000  # acks, both publishers together
DOWN_FOR = 3.0


def _require_redis_server() -> None:
    if not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        if IN_CI:
            pytest.fail("CI=true and redis-server is not installed")
        pytest.skip("redis-server is not installed")


@dataclass
class Acks:
    """What the publishers were told, and when."""

    total: int = 0
    down: bool = False  # Redis has exited
    old_top: int = 0  # the highest offset acknowledged before that: the old epoch's
    restarted_at: float | None = None  # Redis accepts connections again
    # (offset, node, n) of every publish *sent* after Redis came back and acknowledged.
    after: list[tuple[int, str, int]] = field(default_factory=list)
    refused: int = 0
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)


async def _publisher(client: Client, node: str, acks: Acks) -> None:
    for n in range(PER_PUBLISHER):
        while True:
            sent_at = time.monotonic()
            reply = await client.request(
                {
                    "type": "publish",
                    "channel": CHANNEL,
                    "event": "note.added",
                    "data": {"via": node, "n": n},
                    "id": f"{node}-{n}-{sent_at}",
                },
                timeout=15,
            )
            if reply.get("success") is True:
                break
            # Refused while Redis is away: the publisher knows, and retries.
            assert reply.get("code") == "INTERNAL", reply
            acks.refused += 1
            await asyncio.sleep(0.05)
        acks.total += 1
        if not acks.down:
            acks.old_top = max(acks.old_top, reply["offset"])
        if acks.total >= SHUTDOWN_AT:
            acks.shutdown.set()
        if acks.restarted_at is not None and sent_at > acks.restarted_at:
            acks.after.append((reply["offset"], node, n))


class RawSubscriber:
    """A seed-style client: every frame on the channel, in arrival order."""

    def __init__(self, name: str, client: Client) -> None:
        self.name = name
        self.client = client
        self.frames: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.client.ws:
            frame = orjson.loads(raw)
            if frame.get("channel") == CHANNEL and frame.get("type") != "ack":
                self.frames.append(frame)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def events(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if "event" in f]


class SdkSubscriber:
    """The Python SDK: events and recovery notices through its callbacks."""

    def __init__(self, name: str, client: RealtimeClient) -> None:
        self.name = name
        self.client = client
        self.frames: list[dict[str, Any]] = []
        client.on_event(self._on_event)
        client.on_recovery(self._on_recovery)

    def _on_event(self, event: Event) -> None:
        if event.channel == CHANNEL:
            self.frames.append(event.raw)

    def _on_recovery(self, recovery: Recovery) -> None:
        if recovery.channel == CHANNEL:
            self.frames.append(
                {
                    "type": "unrecovered",
                    "recovered": recovery.recovered,
                    "offset": recovery.offset,
                    "epoch": recovery.epoch,
                }
            )

    def events(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if "event" in f]


async def _shutdown_nosave(server: RedisServer) -> None:
    client = aioredis.Redis.from_url(server.url)
    try:
        with contextlib.suppress(RedisError, OSError):
            await client.shutdown(nosave=True)
    finally:
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()
    assert server.process is not None
    await asyncio.wait_for(server.process.wait(), 10)


async def _restart_during_load(server: RedisServer, acks: Acks) -> None:
    await acks.shutdown.wait()
    await _shutdown_nosave(server)
    acks.down = True
    await asyncio.sleep(DOWN_FOR)
    await server.start()
    acks.restarted_at = time.monotonic()


async def test_a_redis_restart_under_load_loses_nothing_after_it_and_says_what_it_lost(
    tmp_path: Path,
) -> None:
    _require_redis_server()
    server = RedisServer(free_port(), tmp_path)
    await server.start()
    # The new epoch's history must cover what a node missed until its link came back.
    group = Nodes(
        tmp_path,
        {
            "BROKER": "redis",
            "REDIS_URL": server.url,
            "BROKER_PREFIX": "cm",
            "HISTORY_TOPICS_SIZE": "100000",
        },
    )
    clients = Clients()
    sdk_clients: list[RealtimeClient] = []
    raw: list[RawSubscriber] = []
    try:
        nodes: list[Node] = await group.start_many("n1", "n2")
        subscribers: list[RawSubscriber | SdkSubscriber] = []
        for node in nodes:
            client = await clients(node.ws)
            await client.subscribe(CHANNEL)
            subscriber = RawSubscriber(f"{node.name}/raw", client)
            subscriber.start()
            raw.append(subscriber)
            sdk = RealtimeClient(node.ws, backoff=Backoff(initial=0.05, maximum=0.5))
            sdk_clients.append(sdk)
            subscribers += [subscriber, SdkSubscriber(f"{node.name}/sdk", sdk)]
            await sdk.connect(timeout=10)
            await sdk.subscribe(CHANNEL)

        acks = Acks()
        publishers = [await clients(node.ws) for node in nodes]
        started = time.monotonic()
        await asyncio.gather(
            _restart_during_load(server, acks),
            *(
                _publisher(client, node.name, acks)
                for client, node in zip(publishers, nodes, strict=True)
            ),
        )
        assert acks.restarted_at is not None and acks.after, "nothing was published after"
        top = max(offset for offset, _, _ in acks.after)

        def new_epoch_of(subscriber: RawSubscriber | SdkSubscriber) -> list[dict[str, Any]]:
            events = subscriber.events()
            epochs = [e["epoch"] for e in events]
            if not epochs:
                return []
            last = epochs[-1]
            return [e for e in events if e["epoch"] == last]

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not all(
            (events := new_epoch_of(s)) and events[-1]["offset"] >= top for s in subscribers
        ):
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.1)

        report = []
        for subscriber in subscribers:
            events = subscriber.events()
            epochs = list(dict.fromkeys(e["epoch"] for e in events))
            assert len(epochs) == 2, f"{subscriber.name}: epochs {epochs}"
            old, new = epochs
            positions = [(e["epoch"], e["offset"]) for e in events]
            assert len(positions) == len(set(positions)), f"{subscriber.name}: duplicates"
            old_offsets = [e["offset"] for e in events if e["epoch"] == old]
            new_offsets = [e["offset"] for e in events if e["epoch"] == new]
            assert old_offsets == sorted(old_offsets), f"{subscriber.name}: old epoch order"
            # Everything of the new epoch, from its first publication, in order.
            lost = sorted(set(range(1, top + 1)) - set(new_offsets))
            assert not lost, (
                f"{subscriber.name} lost {len(lost)} publications of the new epoch "
                f"(first {lost[:5]}); got {len(new_offsets)} of {top}"
            )
            assert new_offsets == list(range(1, len(new_offsets) + 1)), (
                f"{subscriber.name}: new epoch out of order"
            )
            by_payload = {(e["data"]["via"], e["data"]["n"]) for e in events if e["epoch"] == new}
            missing = [(node, n) for _, node, n in acks.after if (node, n) not in by_payload]
            assert not missing, f"{subscriber.name}: acked after the restart, never received"
            # Told, before the new epoch's first event, that the old epoch lost some.
            notices = [f for f in subscriber.frames if f.get("type") == "unrecovered"]
            assert notices, f"{subscriber.name} was never told about the loss"
            notice = notices[0]
            assert notice["recovered"] is False and notice["epoch"] == new, notice
            assert notice["offset"] == 0, notice
            first_new = next(i for i, f in enumerate(subscriber.frames) if f.get("epoch") == new)
            assert subscriber.frames[first_new] is notice, (
                f"{subscriber.name}: the notice must precede the new epoch's events"
            )
            report.append(f"{subscriber.name} {acks.old_top - old_offsets[-1]}")
        for node in nodes:
            # One restart: one reset per channel the node listens to, counted — the test's
            # channel and `global`, which every node's webhook fan-out taps (app/webhooks).
            metrics = (await node.get("/metrics")).text
            assert re.search(r"^cm_broker_stream_resets_total 2\.0$", metrics, re.M), metrics
        print(
            f"\nRedis restart under load: {acks.total} acked, {acks.refused} refused and "
            f"retried; old epoch acked up to {acks.old_top}, lost with Redis's memory: "
            f"{', '.join(report)}; new epoch: {len(acks.after)} acked after the restart, top "
            f"{top}, none lost; {time.monotonic() - started:.1f} s"
        )
    finally:
        for subscriber in raw:
            await subscriber.stop()
        for sdk in sdk_clients:
            await sdk.close()
        await clients.close()
        await group.close()
        await server.stop()
