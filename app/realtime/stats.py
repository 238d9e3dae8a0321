"""Counters behind GET /stats: cheap increments on the hot path, arithmetic only when read."""

from __future__ import annotations

import collections
import time
from typing import Any


class RateMeter:
    """Events per second over a sliding window of one-second buckets."""

    __slots__ = ("_window", "_buckets")

    def __init__(self, window: int = 10) -> None:
        self._window = window
        self._buckets: collections.deque[list[int]] = collections.deque(maxlen=window + 1)

    def mark(self, count: int = 1) -> None:
        second = int(time.monotonic())
        buckets = self._buckets
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += count
        else:
            buckets.append([second, count])

    def rate(self) -> float:
        """Mean rate over the last full `window` seconds (the current second excluded)."""
        now = int(time.monotonic())
        total = sum(n for second, n in self._buckets if now - self._window <= second < now)
        return total / self._window


class Stats:
    """Counters of one node's WebSocket server."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self._started_monotonic = time.monotonic()
        self.connections_opened = 0
        self.connections_closed = 0
        self.connections_rejected: collections.Counter[str] = collections.Counter()
        self.subscriptions_total = 0
        self.messages_in: collections.Counter[str] = collections.Counter()
        self.messages_out: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.close_codes: collections.Counter[int] = collections.Counter()
        self.publications = 0
        self.deliveries = 0
        self.slow_consumers = 0
        self.publication_rate = RateMeter()
        self.delivery_rate = RateMeter()

    @property
    def uptime(self) -> float:
        return time.monotonic() - self._started_monotonic

    def snapshot(self) -> dict[str, Any]:
        return {
            "uptime_seconds": round(self.uptime, 3),
            "started_at": self.started_at,
            "connections": {
                "opened": self.connections_opened,
                "closed": self.connections_closed,
                "current": self.connections_opened - self.connections_closed,
                "rejected": dict(self.connections_rejected),
                "slow_consumers": self.slow_consumers,
                "close_codes": {str(k): v for k, v in sorted(self.close_codes.items())},
            },
            "subscriptions": {"total": self.subscriptions_total},
            "messages": {
                "in": dict(self.messages_in),
                "out": dict(self.messages_out),
                "in_total": sum(self.messages_in.values()),
                "out_total": sum(self.messages_out.values()),
            },
            "errors": dict(self.errors),
            "publications": {
                "total": self.publications,
                "per_second": self.publication_rate.rate(),
            },
            "deliveries": {
                "total": self.deliveries,
                "per_second": self.delivery_rate.rate(),
            },
        }
