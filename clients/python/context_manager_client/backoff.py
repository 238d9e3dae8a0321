"""Reconnect policy shared by the clients: which close codes mean "retry", and how long to wait."""

from __future__ import annotations

import fnmatch
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

# Close codes after which retrying without changing something is pointless (docs/protocol.md,
# "Close codes"): a normal close, invalid data (not UTF-8), a policy violation, a frame too big,
# and the 3500–3999 "do not reconnect" range (bad token, forbidden, connection limit).
# Everything else — 1001, 1006, 1011, 1012, 3000–3499 — retries.
_FINAL_CODES = frozenset({1000, 1007, 1008, 1009})


def should_reconnect(code: int | None) -> bool:
    """Whether a connection closed with `code` (None: it never opened) is worth retrying."""
    if code is None:
        return True
    if code in _FINAL_CODES:
        return False
    return not 3500 <= code <= 3999


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with "equal jitter": between (1 - jitter) and 1 times the base delay."""

    initial: float = 0.5
    maximum: float = 10.0
    factor: float = 2.0
    jitter: float = 0.5

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before reconnect attempt `attempt` (0-based)."""
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return base * (1 - self.jitter * rand())


def event_matcher(pattern: str | None) -> Callable[[str], bool]:
    """A test for event names from a glob such as ``task.*`` (comma-separated alternatives)."""
    if not pattern or pattern == "*":
        return lambda _name: True
    parts = [p.strip() for p in pattern.split(",") if p.strip()]
    if not parts:
        return lambda _name: True
    regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in parts))
    return lambda name: regex.match(name) is not None
