"""Channels sharded over several Redis: the ring, the settings, and a shard restart under load.

The broker contract itself runs on sharded Redis and on Redis Cluster in tests/test_broker.py
(backends redis-sharded, redis-cluster). Here:

- the consistent-hash ring moves few channels when a shard is added, all to the new shard,
  and does not depend on the order the shards are listed in;
- REDIS_URL (a list, or `?cluster=true`), REDIS_SHARDS and REDIS_CLUSTER_URL pick the broker;
- two `context-manager serve` nodes on two private shards, publishers on both nodes on one
  channel per shard; one shard is killed (no persistence: its data is gone) and restarted.
  The other shard's channel keeps flowing meanwhile, both nodes stay ready; the killed shard's
  channel recovers as a single Redis does — an `unrecovered` frame with the new epoch, then the
  new epoch in order — and every subscriber on either node gets each acknowledged publication
  of both channels exactly once, in offset order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.core.config import Settings
from app.realtime.broker import create_broker
from app.realtime.broker.redis import RedisBroker, shard_name
from app.realtime.broker.redis_cluster import RedisClusterBroker
from app.realtime.broker.redis_sharded import HashRing, ShardedRedisBroker
from tests.conftest import Client
from tests.redis_servers import RedisProcess
from tests.test_cluster import Clients, Nodes, eventually

pytestmark = pytest.mark.timeout(120)


# --- the ring ------------------------------------------------------------------------------


def test_adding_a_shard_moves_about_its_share_and_only_to_it() -> None:
    channels = [f"topics/c{n}" for n in range(20_000)]
    three = HashRing(["r1:6379/0", "r2:6379/0", "r3:6379/0"])
    four = HashRing(["r1:6379/0", "r2:6379/0", "r3:6379/0", "r4:6379/0"])
    before = [three.lookup(c) for c in channels]
    after = [four.lookup(c) for c in channels]
    moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert {a for _, a in moved} == {3}, "a channel moved between the old shards"
    assert 0.17 < len(moved) / len(channels) < 0.33  # about 1/4
    shares = Counter(before)
    assert all(0.25 < shares[i] / len(channels) < 0.42 for i in range(3)), shares
    # The order shards are listed in does not matter.
    shuffled = HashRing(["r3:6379/0", "r1:6379/0", "r2:6379/0"])
    names = ["r1:6379/0", "r2:6379/0", "r3:6379/0"]
    shuffled_names = ["r3:6379/0", "r1:6379/0", "r2:6379/0"]
    assert all(
        names[three.lookup(c)] == shuffled_names[shuffled.lookup(c)] for c in channels[:2000]
    )


def test_a_shard_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="distinct"):
        HashRing(["r1:6379/0", "r1:6379/0"])


# --- settings ------------------------------------------------------------------------------


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def test_the_redis_settings_pick_the_broker() -> None:
    one = create_broker(_settings(redis_url="redis://127.0.0.1:6390/0"), "n")
    assert isinstance(one, RedisBroker)

    listed = create_broker(
        _settings(redis_url="redis://127.0.0.1:6390/0, redis://127.0.0.1:6391/0"), "n"
    )
    assert isinstance(listed, ShardedRedisBroker)
    assert [s.name for s in listed.shards] == ["127.0.0.1:6390/0", "127.0.0.1:6391/0"]

    shards = _settings(redis_shards="redis://127.0.0.1:6390/0,redis://127.0.0.1:6391/1")
    assert shards.broker_kind == "redis"
    assert isinstance(create_broker(shards, "n"), ShardedRedisBroker)

    for cluster in (
        _settings(redis_url="redis://127.0.0.1:7000/0?cluster=true"),
        _settings(redis_cluster_url="redis://127.0.0.1:7000"),
    ):
        assert cluster.broker_kind == "redis"
        assert isinstance(create_broker(cluster, "n"), RedisClusterBroker)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"redis_url": "redis://a:1", "redis_shards": "redis://b:1"}, "set one of"),
        ({"redis_shards": "redis://a:1,http://b:1"}, "redis://"),
        ({"redis_shards": "redis://a:1,redis://a:1"}, "twice"),
        ({"redis_url": "redis://a:1?cluster=true,redis://b:1"}, "one node's URL"),
    ],
)
def test_bad_redis_settings_are_refused(values: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _settings(**values)


# --- a shard restart under load, two nodes -------------------------------------------------

PER_PUBLISHER = 600
AFTER = 50  # publications per publisher on the restarted shard once it is back
DOWN_FOR = 1.5


def _channels_on(shards: list[RedisProcess]) -> list[str]:
    """One channel name per shard, as every node's ring places them."""
    ring = HashRing([shard_name(s.url) for s in shards])
    found: dict[int, str] = {}
    n = 0
    while len(found) < len(shards):
        channel = f"topics/shard-{n}"
        found.setdefault(ring.lookup(channel), channel)
        n += 1
    return [found[i] for i in range(len(shards))]


class Reader:
    """Every frame of the given channels one client gets, in arrival order, with its time."""

    def __init__(self, client: Client, channels: set[str]) -> None:
        self.client = client
        self.channels = channels
        self.frames: list[tuple[float, dict[str, Any]]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.client.ws:
            frame = orjson.loads(raw)
            if frame.get("channel") in self.channels and frame.get("type") != "ack":
                self.frames.append((time.monotonic(), frame))

    def on(self, channel: str) -> list[dict[str, Any]]:
        return [f for _, f in self.frames if f["channel"] == channel]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


async def test_a_shard_restart_under_load_affects_only_its_channels(tmp_path: Path) -> None:
    clients = Clients()
    shards = [RedisProcess(tmp_path) for _ in range(2)]
    for shard in shards:
        shard.start()
    steady, restarted = _channels_on(shards)
    group = Nodes(
        tmp_path,
        {
            "BROKER": "redis",
            "REDIS_SHARDS": ",".join(s.url for s in shards),
            "BROKER_PREFIX": "cm",
            # Room for the whole new epoch: the nodes' links may come back after hundreds of
            # publications (their backoff), and all of them must be recovered then.
            "HISTORY_TOPICS_SIZE": "10000",
        },
    )
    readers: list[Reader] = []
    try:
        cluster = await group.start_many("n1", "n2")
        for node in cluster:
            listener = await clients(node.ws)
            for channel in (steady, restarted):
                await listener.subscribe(channel)
            readers.append(Reader(listener, {steady, restarted}))

        acked: dict[str, list[tuple[float, int]]] = {steady: [], restarted: []}
        down: list[float] = []  # [killed at, back at]

        async def publish(client: Client, channel: str, name: str, n: int) -> None:
            while True:
                reply = await client.request(
                    {
                        "type": "publish",
                        "channel": channel,
                        "event": "note.added",
                        "data": {"by": name, "n": n},
                        "id": f"{name}-{channel}-{n}-{time.monotonic()}",
                    },
                    timeout=15,
                )
                if reply.get("success") is True:
                    acked[channel].append((time.monotonic(), reply["offset"]))
                    return
                assert reply.get("code") == "INTERNAL", reply
                if channel == restarted and len(down) == 1:
                    # Refused while its shard is down: not acknowledged, so owed to nobody.
                    # Retrying it until the shard is back would keep this publisher off the
                    # steady channel for the whole outage.
                    return
                await asyncio.sleep(0.02)

        async def publisher(client: Client, name: str) -> None:
            # At least PER_PUBLISHER rounds, and on through the outage: a publisher that had
            # finished its rounds before the kill would publish nothing while the shard is down.
            n = 0
            while n < PER_PUBLISHER or len(down) < 2:
                await publish(client, steady, name, n)
                if len(down) != 1:  # its shard is down: the steady channel goes on alone
                    await publish(client, restarted, name, n)
                if n % 20 == 0:
                    await asyncio.sleep(0.01)
                n += 1
            for n in range(PER_PUBLISHER, PER_PUBLISHER + AFTER):
                await publish(client, restarted, name, n)

        publishers = [
            asyncio.create_task(publisher(await clients(node.ws), node.name)) for node in cluster
        ]
        await eventually(lambda: _true(len(acked[restarted]) >= 200), what="load before the kill")
        shards[1].stop()
        down.append(time.monotonic())
        # The shard's outage is its channels' alone: nodes stay ready, the other flows.
        await asyncio.sleep(DOWN_FOR)
        for node in cluster:
            assert (await node.get("/readyz")).status_code == 200
        shards[1].start()
        down.append(time.monotonic())
        await asyncio.wait_for(asyncio.gather(*publishers), 90)

        killed_at, back_at = down
        steady_during = [t for t, _ in acked[steady] if killed_at < t < back_at]
        assert len(steady_during) > 20, "the steady shard's channel stalled with the other"
        for reader in readers:
            seen_during = [t for t, f in reader.frames if f["channel"] == steady]
            assert any(killed_at + 0.2 < t < back_at for t in seen_during)

        total = len(acked[steady])  # every one acknowledged, none refused: its shard stayed up
        assert total >= 2 * PER_PUBLISHER
        after = {offset for t, offset in acked[restarted] if t > back_at}
        assert len(after) >= 2 * AFTER
        for reader in readers:
            await eventually(
                lambda r=reader: _true(
                    len(r.on(steady)) >= total and after <= _after_notice(r.on(restarted))
                ),
                timeout=30,
                what="every acknowledged publication delivered",
            )
        await asyncio.sleep(0.3)  # anything extra (a duplicate) would show up now

        for reader in readers:
            # The steady channel: one epoch, every offset once, in order, no notice.
            frames = reader.on(steady)
            assert all("event" in f for f in frames), [f for f in frames if "event" not in f]
            assert [f["offset"] for f in frames] == list(range(1, total + 1))
            assert len({f["epoch"] for f in frames}) == 1

            # The restarted one: the old epoch in order, the notice, the new epoch from 1.
            frames = reader.on(restarted)
            notices = [i for i, f in enumerate(frames) if f.get("type") == "unrecovered"]
            assert len(notices) == 1, frames[notices[0] :] if notices else "no notice"
            old, notice, new = frames[: notices[0]], frames[notices[0]], frames[notices[0] + 1 :]
            assert [f["offset"] for f in old] == list(range(1, len(old) + 1))
            assert notice["recovered"] is False and notice["reason"] == "new_epoch"
            assert notice["offset"] == 0  # the new epoch from its first publication
            assert {f["epoch"] for f in new} == {notice["epoch"]}
            assert [f["offset"] for f in new] == list(range(notice["offset"] + 1, len(new) + 1))
            assert after <= {f["offset"] for f in new}
    finally:
        for reader in readers:
            await reader.stop()
        await clients.close()
        await group.close()
        for shard in shards:
            shard.stop()


async def _true(value: bool) -> bool:
    return value


def _after_notice(frames: list[dict[str, Any]]) -> set[int]:
    """The offsets of the events after the last `unrecovered` notice (none: nothing)."""
    notices = [i for i, f in enumerate(frames) if f.get("type") == "unrecovered"]
    return {f["offset"] for f in frames[notices[-1] + 1 :]} if notices else set()
