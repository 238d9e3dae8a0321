"""The broker contract: one test body per behaviour, run against every backend.

memory is the embedded default; redis and postgres are the multi-node brokers, each run with a
key prefix / namespace of its own so that parallel tests never see each other's channels;
redis-sharded is the Redis broker over two private redis-servers (channels hashed over them),
redis-cluster over a private 3-master Redis Cluster (sharded pub/sub).
A multi-node broker can also be built behind TCP proxies that black-hole its traffic
(`Partition`, one per server), to cut one node off while another publishes, then let it come
back.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from app.core.config import Settings
from app.realtime.broker.base import Broker, DuplicatePublication, StreamReset
from app.realtime.history import HistoryPolicies, StreamPosition
from app.realtime.protocol import ResetReason
from app.realtime.publication import Publication
from tests.conftest import SettingsFactory
from tests.redis_servers import RedisProcess, redis_cluster

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """A BrokerHandler that keeps what it was given."""

    def __init__(self) -> None:
        self.items: list[Publication] = []
        self.resets: list[StreamReset] = []
        # Publications and resets in the order they came.
        self.log: list[Publication | StreamReset] = []
        self._changed = asyncio.Event()

    def handle_publication(self, publication: Publication) -> None:
        self.items.append(publication)
        self.log.append(publication)
        self._changed.set()

    def handle_reset(self, reset: StreamReset) -> None:
        self.resets.append(reset)
        self.log.append(reset)
        self._changed.set()

    def trace(self, channel: str) -> list[tuple[str, int] | tuple[str, int, str]]:
        """(epoch, offset) per publication and (epoch, offset, reason) per reset, in order."""
        return [
            (item.position.epoch, item.position.offset, item.reason.value)
            if isinstance(item, StreamReset)
            else (item.epoch, item.offset)
            for item in self.log
            if item.channel == channel
        ]

    def on(self, channel: str) -> list[Publication]:
        return [p for p in self.items if p.channel == channel]

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 10.0, what: str = ""
    ) -> None:
        async def poll() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(poll(), timeout)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what or predicate}") from None

    async def until_count(self, channel: str, count: int, timeout: float = 10.0) -> None:
        await self.wait_for(
            lambda: len(self.on(channel)) >= count, timeout, f"{count} on {channel}"
        )


@dataclass
class Backend:
    name: str
    multi_node: bool
    # Build and start a broker as node `node_id` with the given settings overrides; with
    # `ports`, it reaches its servers on those ports instead (Partitions in front of them).
    make: Callable[..., Awaitable[tuple[Broker, Recorder]]]
    # Lose every channel's history and position, as a Redis flush or restart would.
    lose_history: Callable[[], Awaitable[None]]
    # The servers' ports (what Partitions forward to); none for the in-process broker, and
    # none for a Redis Cluster, whose nodes announce their own addresses to the client.
    ports: list[int] = field(default_factory=list)
    # Put a channel's stream back to an offset under the same epoch, as a restore from an
    # older snapshot does (multi-node brokers only).
    roll_back: Callable[[str, int], Awaitable[None]] | None = None
    brokers: list[Broker] = field(default_factory=list)


def _via_port(url: str, port: int | None) -> str:
    """`url` with its port replaced by `port` (None: unchanged)."""
    if port is None:
        return url
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _port_of(url: str, default: int) -> int:
    return urlsplit(url).port or default


def _publication(channel: str, seq: int, **data: Any) -> Publication:
    return Publication(channel, "note.added", {"seq": seq, **data}, 1_700_000_000_000 + seq)


async def _redis_backend(
    make_settings: SettingsFactory, urls: list[str], name: str = "redis"
) -> AsyncIterator[Backend]:
    """The Redis broker on one Redis, or sharded over several (one URL each)."""
    import redis.asyncio as aioredis

    from app.realtime.broker.redis import RedisBroker
    from app.realtime.broker.redis_sharded import ShardedRedisBroker

    prefix = f"t{secrets.token_hex(5)}"
    clients = [aioredis.Redis.from_url(url) for url in urls]

    async def make(
        node_id: str, ports: list[int] | None = None, **overrides: Any
    ) -> tuple[Broker, Recorder]:
        settings: Settings = make_settings(**overrides)
        policies = HistoryPolicies(settings)
        via = ports or [None] * len(urls)
        shards = [
            RedisBroker(node_id, policies, _via_port(url, port), prefix)
            for url, port in zip(urls, via, strict=True)
        ]
        if len(shards) > 1:
            # Named by the real servers, so that a node behind proxies hashes alike.
            for shard, url in zip(shards, urls, strict=True):
                shard.name = url
        broker: Broker = shards[0] if len(shards) == 1 else ShardedRedisBroker.over(shards)
        recorder = Recorder()
        await broker.start(recorder)
        backend.brokers.append(broker)
        return broker, recorder

    async def lose_history() -> None:
        for client in clients:
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=500)]
            if keys:
                await client.delete(*keys)

    async def roll_back(channel: str, offset: int) -> None:
        meta, stream = f"{prefix}:{{{channel}}}:m", f"{prefix}:{{{channel}}}:s"
        for client in clients:
            if not await client.exists(meta):
                continue
            kept = await client.xrange(stream, "-", f"{offset}-0")
            await client.delete(stream)  # the stream's last id goes back too, as in the snapshot
            for entry_id, fields in kept:
                await client.xadd(stream, fields, id=entry_id)
            await client.hset(meta, "o", offset)

    ports = [_port_of(url, 6379) for url in urls]
    backend = Backend(name, True, make, lose_history, ports, roll_back)
    try:
        yield backend
    finally:
        for broker in backend.brokers:
            await broker.close()
        await lose_history()
        for client in clients:
            await client.aclose()


async def _redis_cluster_backend(
    make_settings: SettingsFactory, url: str, ports: list[int]
) -> AsyncIterator[Backend]:
    import redis.asyncio as aioredis

    from app.realtime.broker.redis_cluster import RedisClusterBroker

    prefix = f"t{secrets.token_hex(5)}"
    # One plain client per master: each deletes the keys it holds.
    clients = [aioredis.Redis(port=port) for port in ports]

    async def make(node_id: str, **overrides: Any) -> tuple[Broker, Recorder]:
        settings: Settings = make_settings(**overrides)
        broker = RedisClusterBroker(node_id, HistoryPolicies(settings), url, prefix)
        recorder = Recorder()
        await broker.start(recorder)
        backend.brokers.append(broker)
        return broker, recorder

    async def lose_history() -> None:
        for client in clients:
            async for key in client.scan_iter(match=f"{prefix}:*", count=500):
                await client.delete(key)

    backend = Backend("redis-cluster", True, make, lose_history)
    try:
        yield backend
    finally:
        for broker in backend.brokers:
            await broker.close()
        await lose_history()
        for client in clients:
            await client.aclose()


async def _memory_backend(make_settings: SettingsFactory) -> AsyncIterator[Backend]:
    from app.realtime.broker.memory import MemoryBroker

    async def make(node_id: str, **overrides: Any) -> tuple[Broker, Recorder]:
        settings: Settings = make_settings(**overrides)
        broker = MemoryBroker(node_id, HistoryPolicies(settings))
        recorder = Recorder()
        await broker.start(recorder)
        backend.brokers.append(broker)
        return broker, recorder

    async def lose_history() -> None:
        # The in-process broker loses its history when its process restarts.
        for broker in backend.brokers:
            broker._streams.clear()  # type: ignore[attr-defined]

    backend = Backend("memory", False, make, lose_history)
    try:
        yield backend
    finally:
        for broker in backend.brokers:
            await broker.close()


async def _postgres_backend(
    make_settings: SettingsFactory, postgres_url: str
) -> AsyncIterator[Backend]:
    from app.realtime.broker.postgres import PostgresBroker, purge_namespace

    namespace = f"t{secrets.token_hex(5)}"

    async def make(
        node_id: str, ports: list[int] | None = None, **overrides: Any
    ) -> tuple[Broker, Recorder]:
        port = ports[0] if ports else None
        settings: Settings = make_settings(database_url=_via_port(postgres_url, port), **overrides)
        broker = PostgresBroker(
            node_id, HistoryPolicies(settings), settings.database_url, namespace
        )
        recorder = Recorder()
        await broker.start(recorder)
        backend.brokers.append(broker)
        return broker, recorder

    async def lose_history() -> None:
        await purge_namespace(postgres_url, namespace)

    async def roll_back(channel: str, offset: int) -> None:
        import asyncpg

        from app.realtime.broker.postgres import asyncpg_dsn

        connection = await asyncpg.connect(asyncpg_dsn(postgres_url))
        try:
            await connection.execute(
                "UPDATE broker_streams SET top_offset = $3 WHERE namespace = $1 AND channel = $2",
                namespace,
                channel,
                offset,
            )
            await connection.execute(
                "DELETE FROM broker_publications WHERE namespace = $1 AND channel = $2"
                ' AND "offset" > $3',
                namespace,
                channel,
                offset,
            )
        finally:
            await connection.close()

    backend = Backend(
        "postgres", True, make, lose_history, [_port_of(postgres_url, 5432)], roll_back
    )
    try:
        yield backend
    finally:
        for broker in backend.brokers:
            await broker.close()
        await lose_history()


@pytest.fixture(scope="module")
def redis_shards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisProcess]]:
    """Two private redis-servers, the shards of the redis-sharded backend (one per module)."""
    servers = [RedisProcess(tmp_path_factory.mktemp("shards")) for _ in range(2)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def private_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisProcess]]:
    """A private 3-master Redis Cluster (one per module)."""
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as nodes:
        yield nodes


@pytest.fixture(params=["memory", "redis", "redis-sharded", "redis-cluster", "postgres"])
async def backend(
    request: pytest.FixtureRequest, make_settings: SettingsFactory
) -> AsyncIterator[Backend]:
    factory: AsyncIterator[Backend]
    if request.param == "memory":
        factory = _memory_backend(make_settings)
    elif request.param == "redis":
        factory = _redis_backend(make_settings, [request.getfixturevalue("redis_url")])
    elif request.param == "redis-sharded":
        servers = request.getfixturevalue("redis_shards")
        factory = _redis_backend(make_settings, [s.url for s in servers], "redis-sharded")
    elif request.param == "redis-cluster":
        nodes = request.getfixturevalue("private_cluster")
        url = f"{nodes[0].url}?cluster=true"
        factory = _redis_cluster_backend(make_settings, url, [n.port for n in nodes])
    else:
        factory = _postgres_backend(make_settings, request.getfixturevalue("migrated_postgres_url"))
    async for value in factory:
        yield value


# --- the contract ------------------------------------------------------------------------------


async def test_publish_reaches_a_subscribed_node_once_in_order(backend: Backend) -> None:
    broker, seen = await backend.make("n1")
    await broker.subscribe("topics/a")
    start = await broker.position("topics/a")
    assert start.offset == 0 and start.epoch

    published = [await broker.publish(_publication("topics/a", n)) for n in range(20)]
    assert [p.offset for p in published] == list(range(1, 21))
    assert {p.epoch for p in published} == {start.epoch}
    assert {p.origin for p in published} == {"n1"}

    await seen.until_count("topics/a", 20)
    # A last one flushes anything that could still be in flight behind the first twenty.
    await broker.publish(_publication("topics/a", 20))
    await seen.until_count("topics/a", 21)
    got = seen.on("topics/a")
    assert [p.offset for p in got] == list(range(1, 22))
    assert [p.data["seq"] for p in got] == list(range(21))
    assert {p.epoch for p in got} == {start.epoch}
    assert (got[0].event, got[0].timestamp) == ("note.added", 1_700_000_000_000)
    assert got[0].frame.text.startswith('{"channel":"topics/a","event":"note.added"')
    assert (await broker.position("topics/a")) == StreamPosition(21, start.epoch)


async def test_unsubscribed_channels_are_not_delivered(backend: Backend) -> None:
    broker, seen = await backend.make("n1")
    await broker.subscribe("topics/on")
    await broker.publish(_publication("topics/off", 0))
    await broker.publish(_publication("topics/on", 0))
    await seen.until_count("topics/on", 1)
    assert seen.on("topics/off") == []

    await broker.unsubscribe("topics/on")
    await broker.subscribe("topics/sentinel")
    await broker.publish(_publication("topics/on", 1))
    await broker.publish(_publication("topics/sentinel", 0))
    await seen.until_count("topics/sentinel", 1)
    assert [p.data["seq"] for p in seen.on("topics/on")] == [0]

    # Publishing to a channel nobody listens to still assigns offsets.
    assert (await broker.position("topics/off")).offset == 1
    assert (await broker.position("topics/on")).offset == 2


async def test_every_node_gets_each_publication_exactly_once(backend: Backend) -> None:
    if not backend.multi_node:
        pytest.skip("the in-process broker has one node")
    (a, seen_a), (b, seen_b) = await backend.make("a"), await backend.make("b")
    for broker in (a, b):
        await broker.subscribe("sessions/s")

    async def burst(broker: Broker, tag: str) -> None:
        for n in range(60):
            await broker.publish(_publication("sessions/s", n, tag=tag))

    await asyncio.gather(burst(a, "a"), burst(b, "b"), burst(a, "a2"))
    for seen in (seen_a, seen_b):
        await seen.until_count("sessions/s", 180)
    # A straggler would show up behind this last one.
    await a.publish(_publication("sessions/s", 999))
    for seen in (seen_a, seen_b):
        await seen.until_count("sessions/s", 181)
        got = seen.on("sessions/s")
        assert [p.offset for p in got] == list(range(1, 182)), backend.name
        for tag in ("a", "b", "a2"):
            # Each publisher's own order is kept too.
            assert [p.data["seq"] for p in got if p.data.get("tag") == tag] == list(range(60))
        assert {p.origin for p in got} == {"a", "b"}
    assert [p.data for p in seen_a.on("sessions/s")] == [p.data for p in seen_b.on("sessions/s")]


async def test_history_is_kept_to_size_and_read_from_a_position(backend: Backend) -> None:
    broker, _ = await backend.make("n1", history_topics_size=10)
    for n in range(25):
        await broker.publish(_publication("topics/h", n))

    page = await broker.history("topics/h")
    assert [p.offset for p in page.publications] == list(range(16, 26))
    assert [p.data["seq"] for p in page.publications] == list(range(15, 25))
    assert page.position.offset == 25 and page.recoverable
    epoch = page.position.epoch
    assert {p.epoch for p in page.publications} == {epoch}

    first = await broker.history("topics/h", limit=3)
    assert [p.offset for p in first.publications] == [16, 17, 18]
    after = await broker.history("topics/h", StreamPosition(18, epoch), limit=4)
    assert after.recoverable and [p.offset for p in after.publications] == [19, 20, 21, 22]

    at_top = await broker.history("topics/h", StreamPosition(25, epoch))
    assert at_top.recoverable and at_top.publications == []

    trimmed = await broker.history("topics/h", StreamPosition(3, epoch))
    assert not trimmed.recoverable and trimmed.publications == []
    other_epoch = await broker.history("topics/h", StreamPosition(20, "elsewhere"))
    assert not other_epoch.recoverable and other_epoch.position.offset == 25
    ahead = await broker.history("topics/h", StreamPosition(26, epoch))
    assert not ahead.recoverable

    # `metrics` keeps its latest publication only.
    for n in range(3):
        await broker.publish(_publication("metrics", n))
    assert [p.data["seq"] for p in (await broker.history("metrics")).publications] == [2]


async def test_history_expires_after_its_ttl(backend: Backend) -> None:
    broker, _ = await backend.make("n1", history_topics_ttl=1)
    for n in range(3):
        await broker.publish(_publication("topics/ttl", n))
    page = await broker.history("topics/ttl")
    assert len(page.publications) == 3
    epoch = page.position.epoch

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while (await broker.history("topics/ttl")).publications:
        assert loop.time() < deadline, "history outlived its TTL"
        await asyncio.sleep(0.1)
    gone = await broker.history("topics/ttl", StreamPosition(1, epoch))
    assert not gone.recoverable


async def test_lost_history_means_a_new_epoch(backend: Backend) -> None:
    broker, seen = await backend.make("n1")
    await broker.subscribe("agents/x")
    for n in range(3):
        await broker.publish(_publication("agents/x", n))
    before = await broker.position("agents/x")
    assert before.offset == 3

    await backend.lose_history()

    after = await broker.position("agents/x")
    assert after.epoch != before.epoch and after.offset == 0
    publication = await broker.publish(_publication("agents/x", 3))
    assert (publication.offset, publication.epoch) == (1, after.epoch)
    page = await broker.history("agents/x", before)
    assert not page.recoverable
    await seen.until_count("agents/x", 4)
    assert seen.on("agents/x")[-1].epoch == after.epoch
    # Listening throughout, the node got every publication of both epochs: nothing to report.
    assert seen.resets == []


async def test_recovery_page_over_the_broker(backend: Backend) -> None:
    broker, _ = await backend.make("n1")
    position = await broker.position("agents/r")
    for n in range(500):
        await broker.publish(_publication("agents/r", n))
    page = await broker.history("agents/r", StreamPosition(0, position.epoch))
    assert page.recoverable and len(page.publications) == 500
    assert [p.data["seq"] for p in page.publications] == list(range(500))
    page = await broker.history("agents/r", StreamPosition(499, position.epoch))
    assert page.recoverable and [p.offset for p in page.publications] == [500]


async def test_large_payloads_are_carried_whole(backend: Backend) -> None:
    """PostgreSQL's NOTIFY stops at 8000 bytes; no backend may truncate."""
    broker, seen = await backend.make("n1")
    await broker.subscribe("topics/big")
    blob = "x" * 200_000
    await broker.publish(_publication("topics/big", 0, blob=blob))
    await broker.publish(_publication("topics/big", 1))
    await seen.until_count("topics/big", 2)
    got = seen.on("topics/big")
    assert [p.offset for p in got] == [1, 2]
    assert got[0].data["blob"] == blob
    assert (await broker.history("topics/big")).publications[0].data["blob"] == blob


# --- idempotency keys ------------------------------------------------------------------------


async def test_a_repeated_idempotency_key_is_answered_with_the_first_offset(
    backend: Backend,
) -> None:
    broker, seen = await backend.make("n1")
    await broker.subscribe("topics/idem")
    first = await broker.publish(_publication("topics/idem", 0), "key-1")
    assert first.offset == 1
    with pytest.raises(DuplicatePublication) as repeat:
        await broker.publish(_publication("topics/idem", 1), "key-1")
    assert repeat.value.position == StreamPosition(1, first.epoch)
    # Another key, or no key, publishes; the duplicate took no offset.
    assert (await broker.publish(_publication("topics/idem", 2), "key-2")).offset == 2
    assert (await broker.publish(_publication("topics/idem", 3))).offset == 3
    with pytest.raises(DuplicatePublication) as again:
        await broker.publish(_publication("topics/idem", 4), "key-2")
    assert again.value.position.offset == 2
    # Keys are per channel: the same key elsewhere is a first.
    assert (await broker.publish(_publication("topics/other", 0), "key-1")).offset == 1

    await seen.until_count("topics/idem", 3)
    await broker.publish(_publication("topics/idem", 5))
    await seen.until_count("topics/idem", 4)
    assert [p.data["seq"] for p in seen.on("topics/idem")] == [0, 2, 3, 5]
    page = await broker.history("topics/idem")
    assert [p.data["seq"] for p in page.publications] == [0, 2, 3, 5]


async def test_an_idempotency_key_counts_within_the_history_ttl_and_epoch(
    backend: Backend,
) -> None:
    broker, _ = await backend.make("n1", history_topics_ttl=1)
    first = await broker.publish(_publication("topics/idem-ttl", 0), "k")
    with pytest.raises(DuplicatePublication):
        await broker.publish(_publication("topics/idem-ttl", 1), "k")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        try:
            later = await broker.publish(_publication("topics/idem-ttl", 2), "k")
            break
        except DuplicatePublication:
            assert loop.time() < deadline, "the key outlived the history TTL"
            await asyncio.sleep(0.2)
    assert later.offset == first.offset + 1

    # History lost (a new epoch): the key goes with it.
    await broker.publish(_publication("agents/idem", 0), "k")
    await backend.lose_history()
    fresh = await broker.publish(_publication("agents/idem", 1), "k")
    assert fresh.offset == 1


async def test_one_idempotency_key_from_two_nodes_at_once_publishes_once(
    backend: Backend,
) -> None:
    if not backend.multi_node:
        pytest.skip("the in-process broker has one node")
    (a, seen_a), (b, _) = await backend.make("a"), await backend.make("b")
    await a.subscribe("sessions/idem")

    async def attempt(broker: Broker, n: int, key: str) -> int | StreamPosition:
        try:
            return (await broker.publish(_publication("sessions/idem", n), key)).offset
        except DuplicatePublication as duplicate:
            return duplicate.position

    for round_ in range(10):
        key = f"retry-{round_}"
        results = await asyncio.gather(*(attempt(x, round_, key) for x in (a, b, a, b)))
        offsets = [r for r in results if isinstance(r, int)]
        duplicates = [r for r in results if isinstance(r, StreamPosition)]
        assert len(offsets) == 1, results
        assert {d.offset for d in duplicates} == set(offsets)
    await seen_a.until_count("sessions/idem", 10)
    await a.publish(_publication("sessions/idem", 99))
    await seen_a.until_count("sessions/idem", 11)
    assert [p.offset for p in seen_a.on("sessions/idem")] == list(range(1, 12))


# --- a node cut off while the others publish -----------------------------------------------------


class Partitions:
    """One Partition per server of a broker, cut and healed together."""

    def __init__(self, ports: list[int]) -> None:
        self.members = [Partition(port) for port in ports]

    @property
    def ports(self) -> list[int]:
        return [member.port for member in self.members]

    @property
    def cut(self) -> bool:
        return all(member.cut for member in self.members)

    @cut.setter
    def cut(self, value: bool) -> None:
        for member in self.members:
            member.cut = value

    def heal(self) -> None:
        for member in self.members:
            member.heal()


@contextlib.asynccontextmanager
async def _behind_partition(
    backend: Backend, node_id: str, **overrides: Any
) -> AsyncIterator[tuple[Broker, Recorder, Partitions]]:
    """A broker of `backend` whose every connection goes through a Partition."""
    if not backend.multi_node:
        pytest.skip("the in-process broker has no link to lose")
    if not backend.ports:
        pytest.skip("a Redis Cluster client reaches the addresses the masters announce")
    partitions = Partitions(backend.ports)
    for member in partitions.members:
        await member.start()
    try:
        broker, seen = await backend.make(node_id, ports=partitions.ports, **overrides)
        try:
            yield broker, seen, partitions
        finally:
            backend.brokers.remove(broker)
            await broker.close()
    finally:
        for member in partitions.members:
            await member.close()


async def test_a_node_cut_off_across_a_history_loss_is_told_then_gets_the_new_epoch(
    backend: Backend,
) -> None:
    """Redis restarted without persistence while this node was away: another node published
    in the new epoch before this one came back. It reports the loss, then delivers the new
    epoch from its first publication — not from wherever its link happened to come back."""
    a, _ = await backend.make("a")
    async with _behind_partition(backend, "b") as (b, seen, partition):
        await b.subscribe("topics/e")
        for n in range(3):
            await a.publish(_publication("topics/e", n))
        await seen.until_count("topics/e", 3)
        old = seen.on("topics/e")[0].epoch

        partition.cut = True
        for n in range(3, 5):
            await a.publish(_publication("topics/e", n))  # gone with the history
        await backend.lose_history()
        published = [await a.publish(_publication("topics/e", n)) for n in range(5, 9)]
        new = published[0].epoch
        assert new != old and [p.offset for p in published] == [1, 2, 3, 4]
        partition.heal()

        await seen.until_count("topics/e", 7)
        await a.publish(_publication("topics/e", 9))
        await seen.until_count("topics/e", 8)
        assert seen.trace("topics/e") == [
            (old, 1),
            (old, 2),
            (old, 3),
            (new, 0, ResetReason.NEW_EPOCH.value),
            *((new, offset) for offset in range(1, 6)),
        ]
        assert [p.data["seq"] for p in seen.on("topics/e")] == [0, 1, 2, 5, 6, 7, 8, 9]


async def test_a_node_cut_off_past_its_history_is_told_of_the_gap(backend: Backend) -> None:
    a, _ = await backend.make("a", history_topics_size=5)
    async with _behind_partition(backend, "b", history_topics_size=5) as (b, seen, partition):
        await b.subscribe("topics/g")
        for n in range(3):
            await a.publish(_publication("topics/g", n))
        await seen.until_count("topics/g", 3)
        epoch = seen.on("topics/g")[0].epoch

        partition.cut = True
        for n in range(3, 13):
            await a.publish(_publication("topics/g", n))  # 4..8 trimmed away
        partition.heal()

        await seen.until_count("topics/g", 8)
        await a.publish(_publication("topics/g", 13))
        await seen.until_count("topics/g", 9)
        assert seen.trace("topics/g") == [
            (epoch, 1),
            (epoch, 2),
            (epoch, 3),
            (epoch, 8, ResetReason.GAP.value),
            *((epoch, offset) for offset in range(9, 15)),
        ]


async def test_a_node_cut_off_across_a_roll_back_is_told_and_sends_nothing_twice(
    backend: Backend,
) -> None:
    """A restore from an older snapshot (RDB, AOF `everysec` after a crash) rolls a stream
    back under its epoch: the node says so and resends nothing it delivered already."""
    a, _ = await backend.make("a")
    async with _behind_partition(backend, "b") as (b, seen, partition):
        assert backend.roll_back is not None
        await b.subscribe("topics/rb")
        for n in range(5):
            await a.publish(_publication("topics/rb", n))
        await seen.until_count("topics/rb", 5)
        epoch = seen.on("topics/rb")[0].epoch

        partition.cut = True
        await backend.roll_back("topics/rb", 3)
        partition.heal()

        await seen.wait_for(lambda: bool(seen.resets), what="the roll-back reported")
        await a.publish(_publication("topics/rb", 5))  # offset 4 again: a new publication
        await seen.until_count("topics/rb", 6)
        assert seen.trace("topics/rb") == [
            *((epoch, offset) for offset in range(1, 6)),
            (epoch, 3, ResetReason.GAP.value),
            (epoch, 4),
        ]


async def test_a_channel_quiet_until_the_break_is_caught_up(backend: Backend) -> None:
    a, _ = await backend.make("a")
    async with _behind_partition(backend, "b") as (b, seen, partition):
        await b.subscribe("topics/q")
        partition.cut = True
        for n in range(3):
            await a.publish(_publication("topics/q", n))
        partition.heal()

        await seen.until_count("topics/q", 3)
        await a.publish(_publication("topics/q", 3))
        await seen.until_count("topics/q", 4)
        assert [p.offset for p in seen.on("topics/q")] == [1, 2, 3, 4]
        assert seen.resets == []


# --- Redis only: a link that fails silently ------------------------------------------------------


class Partition:
    """A TCP proxy to Redis that can black-hole traffic (no RST), then heal."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut = False
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        self._writers += [writer, upstream_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                if not self.cut:  # cut: bytes vanish, as on a dead network path
                    sink.write(data)
            sink.close()  # one side closed: so does the other (PostgreSQL waits for it)

        with contextlib.suppress(Exception):
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    def heal(self) -> None:
        """End the partition; the connections it broke are dropped (their state is lost)."""
        self.cut = False
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.heal()
        if self._server is not None:
            self._server.close()


async def test_redis_silent_partition_is_detected_and_caught_up(
    make_settings: SettingsFactory, redis_url: str
) -> None:
    """No RST: the PING watchdog notices, and the node wins back what it missed, once."""
    from urllib.parse import urlsplit

    import redis.asyncio as aioredis

    from app.realtime.broker.redis import RedisBroker

    prefix = f"t{secrets.token_hex(5)}"
    parts = urlsplit(redis_url)
    partition = Partition(parts.port or 6379)
    await partition.start()
    policies = HistoryPolicies(make_settings())
    direct = RedisBroker("direct", policies, redis_url, prefix)
    behind = RedisBroker(
        "behind", policies, f"redis://127.0.0.1:{partition.port}{parts.path}", prefix, 0.2
    )
    seen_direct, seen_behind = Recorder(), Recorder()
    try:
        await direct.start(seen_direct)
        await behind.start(seen_behind)
        for broker in (direct, behind):
            await broker.subscribe("topics/p")
        for n in range(5):
            await direct.publish(_publication("topics/p", n))
        await seen_behind.until_count("topics/p", 5)

        partition.cut = True
        for n in range(5, 55):
            await direct.publish(_publication("topics/p", n))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while behind.healthy:
            assert loop.time() < deadline, "a silent partition was not detected"
            await asyncio.sleep(0.05)
        assert len(seen_behind.on("topics/p")) == 5

        partition.heal()
        await seen_behind.until_count("topics/p", 55)
        await direct.publish(_publication("topics/p", 55))
        await seen_behind.until_count("topics/p", 56)
        got = seen_behind.on("topics/p")
        assert [p.offset for p in got] == list(range(1, 57))
        assert [p.data["seq"] for p in got] == list(range(56))
        assert behind.healthy and behind.link_state().reconnects == 1
        assert behind.link_state().recovered_after_reconnect == 50
    finally:
        await behind.close()
        await direct.close()
        await partition.close()
        client = aioredis.Redis.from_url(redis_url)
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
        await client.aclose()
