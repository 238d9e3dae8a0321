"""Per-channel history: stream positions (offset + epoch), retention policies, recovery rules.

Every publication on a channel gets the next `offset` of that channel's stream (1, 2, 3, … with
no gaps). A stream also has an `epoch`, a short random string chosen when the stream is created;
whenever a stream's history is lost (an in-process broker restarted, Redis flushed, the stream
expired) it starts again under a new epoch, so an old (offset, epoch) can never be mistaken for
a position in the new stream.

A client that knows its last position asks to `subscribe` with `since`; the server replays what
it missed when the history still covers it — same epoch, nothing trimmed past `since` — and
otherwise says `recovered: false` so the client reloads its state over REST.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from app.core.config import Settings
from app.realtime.channels import ChannelKind, parse_channel
from app.realtime.protocol import ErrorCode, ProtocolError
from app.realtime.publication import Publication


def new_epoch() -> str:
    return secrets.token_hex(4)


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a channel's stream stands: the last offset and the epoch it belongs to."""

    offset: int
    epoch: str

    def as_dict(self) -> dict[str, Any]:
        return {"offset": self.offset, "epoch": self.epoch}

    @classmethod
    def parse(cls, value: Any) -> StreamPosition:
        """Validate a client's `since` object, or raise INVALID_MESSAGE."""
        if not isinstance(value, dict):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "Field 'since' must be an object")
        offset = value.get("offset")
        epoch = value.get("epoch")
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset < 2**63:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, "Field 'since.offset' must be a non-negative integer"
            )
        if not isinstance(epoch, str) or len(epoch) > 64:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "Field 'since.epoch' must be a string")
        return cls(offset, epoch)


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    """How much of a channel's stream is kept: at most `size` publications for `ttl` seconds."""

    size: int
    ttl: float


@dataclass(slots=True)
class HistoryPage:
    """A read of a stream: publications after `since` (oldest first) and the stream's top."""

    publications: list[Publication]
    position: StreamPosition
    # False when `since` is no longer covered: another epoch, or trimmed past it.
    recoverable: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class HistoryPolicies:
    """The retention policy of each channel kind, from the settings its registry entry names."""

    def __init__(self, settings: Settings) -> None:
        # Brokers index it with a publication's kind: one dict lookup per publication.
        self.by_kind: dict[ChannelKind, HistoryPolicy] = {
            kind: HistoryPolicy(*kind.retention(settings)) for kind in ChannelKind
        }

    def for_channel(self, channel: str) -> HistoryPolicy:
        """The policy of a channel known by name (a history read: parse_channel is cached)."""
        return self.by_kind[parse_channel(channel).kind]

    @property
    def max_ttl(self) -> float:
        return max(policy.ttl for policy in self.by_kind.values())


def recovery_page(
    publications: list[Publication], position: StreamPosition, since: StreamPosition | None
) -> HistoryPage:
    """Cut a stream's retained publications (oldest first) down to what follows `since`."""
    if since is None:
        return HistoryPage(publications, position)
    if since.epoch != position.epoch or since.offset > position.offset:
        return HistoryPage([], position, recoverable=False)
    missed = [p for p in publications if p.offset > since.offset]
    # Covered when nothing is missing between `since` and the oldest retained publication.
    expected_first = since.offset + 1
    recoverable = since.offset == position.offset or (
        bool(missed) and missed[0].offset == expected_first
    )
    return HistoryPage(missed if recoverable else [], position, recoverable=recoverable)


def history_page(
    publications: list[Publication],
    position: StreamPosition,
    since: StreamPosition | None,
    limit: int | None,
) -> HistoryPage:
    """`recovery_page`, then at most `limit` publications — oldest first, so a client pages
    forward with `since` = the last offset it got. Every broker's `history` ends here."""
    page = recovery_page(publications, position, since)
    if limit is not None and len(page.publications) > limit:
        page.publications = page.publications[:limit]
    return page
