"""A publication: one event on one channel, as it travels from publisher to subscribers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.realtime.channels import Channel, ChannelKind, parse_channel
from app.realtime.frames import Frame
from app.realtime.protocol import event_frame


@dataclass(slots=True)
class Publication:
    channel: str
    event: str
    data: Any
    timestamp: int
    # Set by the broker that accepted it (history and recovery use them).
    offset: int = 0
    epoch: str = ""
    # The node that published it; a multi-node broker uses it to drop its own echoes.
    origin: str = ""
    _frame: Frame | None = field(default=None, repr=False, compare=False)
    _kind: ChannelKind | None = field(default=None, repr=False, compare=False)

    @classmethod
    def on(cls, channel: Channel, event: str, data: Any, timestamp: int) -> Publication:
        """A publication on a parsed channel: it carries the kind, so nothing parses it again."""
        publication = cls(channel.name, event, data, timestamp)
        publication._kind = channel.kind
        return publication

    @property
    def kind(self) -> ChannelKind:
        """The channel's kind (its broker looks the retention up by it): parsed at most once."""
        kind = self._kind
        if kind is None:
            kind = self._kind = parse_channel(self.channel).kind
        return kind

    @property
    def frame(self) -> Frame:
        """The encoded event frame, built on first use and shared by every subscriber."""
        frame = self._frame
        if frame is None:
            frame = self._frame = Frame(
                event_frame(
                    self.channel, self.event, self.data, self.timestamp, self.offset, self.epoch
                ),
                "event",
            )
        return frame
