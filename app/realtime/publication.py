"""A publication: one event on one channel, as it travels from publisher to subscribers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
