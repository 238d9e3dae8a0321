"""The broker contract: publish to a channel, keep its history, call back for publications.

The hub subscribes a node to a channel on the broker once, however many local clients
subscribe; the broker calls `BrokerHandler.handle_publication` once per publication per node,
and `handle_reset` when it knows the node missed publications it cannot deliver any more.
A broker also owns each channel's stream position (offset + epoch) and retained history, so
that offsets are assigned in one place for the whole cluster (see history.py).

A publish may carry an idempotency key: a second publish on the same channel with a key the
broker accepted within the channel's history TTL publishes nothing and raises
`DuplicatePublication` with the first one's position. The broker decides it atomically with the
offset (one Redis script, one PostgreSQL transaction), so two nodes retrying the same key at
once publish it once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from app.realtime.frames import Frame
from app.realtime.history import HistoryPage, StreamPosition, history_page
from app.realtime.protocol import ResetReason, unrecovered_frame
from app.realtime.publication import Publication


@dataclass(slots=True)
class StreamReset:
    """Publications of `channel` up to `position` may never reach this node's subscribers.

    A multi-node broker sends it when its history cannot cover what the node missed (Redis
    restarted without persistence: a new epoch; or the history was trimmed past the node's last
    delivered position). Delivery goes on, in order, with the publications after `position`.
    """

    channel: str
    position: StreamPosition
    reason: ResetReason
    _frame: Frame | None = field(default=None, repr=False, compare=False)

    @property
    def frame(self) -> Frame:
        """The `unrecovered` frame, encoded once for every subscriber."""
        frame = self._frame
        if frame is None:
            position = self.position
            frame = self._frame = Frame(
                unrecovered_frame(self.channel, position.offset, position.epoch, self.reason),
                "unrecovered",
            )
        return frame


# Longest idempotency key a client may send (characters); the broker keeps one per channel and
# key for the history TTL, so the bound is what a client can make the server hold per publish.
MAX_IDEMPOTENCY_KEY = 128


class DuplicatePublication(Exception):  # noqa: N818 - an outcome, not a failure
    """The publish repeated an idempotency key accepted on `channel`: nothing was published.

    `position` is where the first publication with that key went (its offset and epoch).
    """

    def __init__(self, channel: str, position: StreamPosition) -> None:
        super().__init__(f"duplicate publication on {channel} (offset {position.offset})")
        self.channel = channel
        self.position = position


class BrokerHandler(Protocol):
    def handle_publication(self, publication: Publication) -> None:
        """Deliver a publication to this node's subscribers. Must not block."""

    def handle_reset(self, reset: StreamReset) -> None:
        """Tell this node's subscribers of `reset.channel` what may be lost. Must not block.

        Called in order with the channel's publications: the ones that follow it are those
        after `reset.position`.
        """


class Broker(Protocol):
    async def start(self, handler: BrokerHandler) -> None:
        """Connect and begin calling `handler` for publications on subscribed channels."""

    async def close(self) -> None:
        """Disconnect; no callbacks after this returns."""

    async def publish(
        self, publication: Publication, idempotency_key: str | None = None
    ) -> Publication:
        """Assign offset and epoch, append to history, deliver to every node; return it.

        With `idempotency_key`: when the channel accepted that key within its history TTL (in
        the same epoch), raise `DuplicatePublication` instead, publishing nothing.
        """

    async def subscribe(self, channel: str) -> None:
        """Start receiving publications on `channel` (called once per channel per node)."""

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving publications on `channel`."""

    async def history(
        self, channel: str, since: StreamPosition | None = None, limit: int | None = None
    ) -> HistoryPage:
        """Retained publications after `since` (all retained when None), oldest first."""

    async def position(self, channel: str) -> StreamPosition:
        """The stream's current top offset and epoch."""

    @property
    def healthy(self) -> bool:
        """False while the broker cannot deliver (e.g. reconnecting)."""

    def link_state(self) -> LinkState:
        """What /metrics shows of the link to the other nodes (zeros without one)."""


@dataclass(frozen=True, slots=True)
class LinkState:
    """A broker's link to the other nodes, as /metrics shows it."""

    reconnects: int = 0  # outages, each counted once however many attempts it took
    recovered_after_reconnect: int = 0  # publications won back from history after them
    stream_resets: int = 0  # channels whose subscribers were told of what history lost
    last_outage_seconds: float = 0.0

    def __add__(self, other: LinkState) -> LinkState:
        return LinkState(
            self.reconnects + other.reconnects,
            self.recovered_after_reconnect + other.recovered_after_reconnect,
            self.stream_resets + other.stream_resets,
            max(self.last_outage_seconds, other.last_outage_seconds),
        )


class StoredHistory:
    """`history` and `position` of a broker that keeps streams outside the process.

    Such a broker reads a stream's position and (optionally) its retained publications in one
    round trip, `_read`; recovery and paging are then the same for all (history.history_page).
    """

    async def _read(
        self, channel: str, since: StreamPosition | None, limit: int | None, entries: bool
    ) -> tuple[StreamPosition, list[Publication]]:
        raise NotImplementedError

    async def history(
        self, channel: str, since: StreamPosition | None = None, limit: int | None = None
    ) -> HistoryPage:
        position, publications = await self._read(channel, since, limit, True)
        return history_page(publications, position, since, limit)

    async def position(self, channel: str) -> StreamPosition:
        position, _ = await self._read(channel, None, None, False)
        return position
