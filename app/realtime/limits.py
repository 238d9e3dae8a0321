"""Per-connection rate limits: token buckets, refilled lazily (no timers, no tasks)."""

from __future__ import annotations

import time


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`; `take()` spends one."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        """Spend a token; False (and nothing spent) when the bucket is empty."""
        now = time.monotonic()
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True
