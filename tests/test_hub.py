"""The hub's side of a stream reset: one `unrecovered` frame, in order, also mid-subscribe.

The broker side (when a node sends a StreamReset) is tested in test_broker.py, the whole path
with a real Redis restart in test_redis_restart.py; here the hub runs over the in-process
broker, whose position read is held open to put a reset in the middle of a subscribe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson

from app.core.config import Settings
from app.realtime.broker.base import StreamReset
from app.realtime.broker.memory import MemoryBroker
from app.realtime.connection import Connection
from app.realtime.frames import Frame
from app.realtime.history import HistoryPolicies, StreamPosition
from app.realtime.hub import Hub, Subscribed
from app.realtime.protocol import ResetReason
from app.realtime.publication import Publication
from app.realtime.stats import Stats
from tests.conftest import SettingsFactory


class RecordingSink:
    """A connection's sink that keeps the JSON of every frame pushed to it."""

    def __init__(self) -> None:
        self.frames: list[dict[str, object]] = []

    def push(self, frame: Frame) -> bool:
        self.frames.append(orjson.loads(frame.payload))
        return True

    @property
    def queued_bytes(self) -> int:
        return 0

    async def close(self, code: int, reason: str, timeout: float) -> None:
        return None

    def abort(self, code: int, reason: str) -> None:
        return None


class HeldBroker(MemoryBroker):
    """The in-process broker with its position read held until `release` is set."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("n1", HistoryPolicies(settings))
        self.hold = False
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def position(self, channel: str) -> StreamPosition:
        if not self.hold:
            return await super().position(channel)
        self.reading.set()
        await self.release.wait()
        return await super().position(channel)


def _connection(name: str) -> tuple[Connection, RecordingSink]:
    connection = Connection(name, agent_id=None, session_id=None, remote="127.0.0.1")
    sink = RecordingSink()
    connection.sink = sink
    return connection, sink


def _shape(frames: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [
        ("ack", f["offset"], f["epoch"])
        if f.get("type") == "ack"
        else ("reset", f["offset"], f["epoch"], f["reason"])
        if f.get("type") == "unrecovered"
        else ("event", f["offset"], f["epoch"])
        for f in frames
    ]


async def _start(make_settings: SettingsFactory) -> tuple[HeldBroker, Hub]:
    broker = HeldBroker(make_settings())
    hub = Hub(broker, Stats())
    await broker.start(hub)
    return broker, hub


def _acknowledge(connection: Connection) -> Callable[[Subscribed], None]:
    def on_subscribed(outcome: Subscribed) -> None:
        assert connection.sink is not None
        payload = {"type": "ack", **outcome.position.as_dict()}
        connection.sink.push(Frame(orjson.dumps(payload), "ack"))

    return on_subscribed


async def test_a_reset_reaches_every_subscriber_once_before_what_follows(
    make_settings: SettingsFactory,
) -> None:
    broker, hub = await _start(make_settings)
    try:
        connections = [_connection(f"c{n}") for n in range(3)]
        for connection, _ in connections:
            await hub.subscribe(connection, "topics/r")
        await broker.publish(Publication("topics/r", "note.added", {}, 0))
        epoch = (await broker.position("topics/r")).epoch
        hub.handle_reset(StreamReset("topics/r", StreamPosition(0, "e2"), ResetReason.NEW_EPOCH))
        hub.handle_reset(StreamReset("topics/other", StreamPosition(0, "e2"), ResetReason.GAP))
        for _, sink in connections:
            assert _shape(sink.frames) == [("event", 1, epoch), ("reset", 0, "e2", "new_epoch")]
            assert sink.frames[-1]["recovered"] is False
            assert sink.frames[-1]["channel"] == "topics/r"
            assert "event" not in sink.frames[-1]  # a seed client must not take it for one
        assert hub._stats.messages_out["unrecovered"] == 3
    finally:
        await broker.close()


async def test_a_subscribe_in_flight_gets_the_reset_after_its_ack(
    make_settings: SettingsFactory,
) -> None:
    """The position read before the loss: the client is told, after the ack, then the rest."""
    broker, hub = await _start(make_settings)
    try:
        live, _ = _connection("live")
        await hub.subscribe(live, "topics/f")  # the node is subscribed
        old = await broker.position("topics/f")
        late, sink = _connection("late")
        broker.hold = True
        subscribing = asyncio.create_task(hub.subscribe(late, "topics/f", None, _acknowledge(late)))
        await broker.reading.wait()
        # What the broker's catch-up hands the hub while that read is out: the loss, the new
        # epoch's first publications. The held read itself answers with the old epoch.
        hub.handle_reset(StreamReset("topics/f", StreamPosition(0, "e2"), ResetReason.NEW_EPOCH))
        for offset in (1, 2):
            hub.handle_publication(Publication("topics/f", "note.added", {}, 0, offset, "e2"))
        broker.release.set()
        await subscribing
        assert _shape(sink.frames) == [
            ("ack", old.offset, old.epoch),
            ("reset", 0, "e2", "new_epoch"),
            ("event", 1, "e2"),
            ("event", 2, "e2"),
        ]
    finally:
        await broker.close()


async def test_a_subscribe_that_read_after_the_loss_is_not_told_again(
    make_settings: SettingsFactory,
) -> None:
    """Its ack already names the new epoch (and `recovered: false` had it asked `since`)."""
    broker, hub = await _start(make_settings)
    try:
        live, _ = _connection("live")
        await hub.subscribe(live, "topics/n")
        late, sink = _connection("late")
        broker.hold = True
        subscribing = asyncio.create_task(hub.subscribe(late, "topics/n", None, _acknowledge(late)))
        await broker.reading.wait()
        broker._streams.clear()  # the loss: the held read will answer with the new epoch
        new = (await MemoryBroker.position(broker, "topics/n")).epoch
        hub.handle_reset(StreamReset("topics/n", StreamPosition(0, new), ResetReason.NEW_EPOCH))
        hub.handle_publication(Publication("topics/n", "note.added", {}, 0, 1, new))
        broker.release.set()
        await subscribing
        assert _shape(sink.frames) == [("ack", 0, new), ("event", 1, new)]
    finally:
        await broker.close()
