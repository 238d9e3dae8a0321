"""Admission of TCP connections before they are requests: per address, and a descriptor budget.

One `ConnectionGuard` per process (`app.server.Service`), shared by its three ports, counts
every open client connection — a request head still arriving, an HTTP keep-alive connection,
an upgraded WebSocket — by client address, from accept to close:

* **Per address.** At most `max_per_address` (MAX_CONNECTIONS_PER_IP) connections of one
  address are served. One more is let in so that it can be told why (HTTP 503, or WebSocket
  close 3504 from the endpoint's admission, which asks `peers`); past that a new connection is
  closed at accept, before a byte of it is read, so a slowloris from one address holds at most
  limit + 1 descriptors.
* **Descriptor budget.** RLIMIT_NOFILE minus FD_RESERVE descriptors may be client connections
  (the reserve is for listeners, the database, Redis, log files). At the budget, a new
  connection makes room by closing the connection that has waited longest for a request head
  (half-sent or keep-alive idle: nothing is in flight on it), as nginx reuses its keep-alive
  connections when it runs out; with none to close the new one is refused. Requests in flight
  and upgraded WebSockets are never closed to make room. So one address at its limit, or many
  addresses slowly sending heads, cannot keep `/health` or another client out.
"""

from __future__ import annotations

import collections
import enum
import resource
from typing import Protocol

# Below this a budget would refuse the first few clients of a process started with a tiny
# RLIMIT_NOFILE; such a process is misconfigured, not under attack.
MIN_BUDGET = 16


class Admission(enum.Enum):
    """What `ConnectionGuard.admit` decided for a new connection."""

    ADMITTED = "admitted"
    OVER_LIMIT = "over limit"  # let in to be told why it is refused (503 / 3504)
    REFUSED = "refused"  # close at once


class Evictable(Protocol):
    """A connection waiting for a request head, which the guard may close to make room."""

    def evict(self) -> None:
        """Close now: a newer connection needs the descriptor."""


def descriptor_budget(reserve: int) -> int:
    """Client connections this process may hold: RLIMIT_NOFILE minus `reserve`."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(MIN_BUDGET, soft - reserve)


class ConnectionGuard:
    """Counts open connections per address and in total (see module docstring)."""

    __slots__ = ("max_per_address", "budget", "open", "evicted", "refused", "_per_address", "_idle")

    def __init__(self, max_per_address: int, budget: int) -> None:
        self.max_per_address = max_per_address
        self.budget = budget
        self.open = 0
        self.evicted = 0  # closed to make room for a newer connection
        self.refused = 0  # closed at accept
        self._per_address: collections.Counter[str] = collections.Counter()
        # Connections waiting for a request head, oldest first (dicts keep insertion order).
        self._idle: dict[Evictable, None] = {}

    def admit(self, address: str) -> Admission:
        """Count a new connection in, or refuse it (then it is not counted)."""
        held = self._per_address[address]
        if held > self.max_per_address or (self.open >= self.budget and not self._make_room()):
            self.refused += 1
            if not held:
                del self._per_address[address]
            return Admission.REFUSED
        self._per_address[address] = held + 1
        self.open += 1
        return Admission.OVER_LIMIT if held == self.max_per_address else Admission.ADMITTED

    def release(self, address: str, connection: Evictable | None = None) -> None:
        """A counted connection closed."""
        if connection is not None:
            self._idle.pop(connection, None)
        self.open -= 1
        remaining = self._per_address[address] - 1
        if remaining > 0:
            self._per_address[address] = remaining
        else:
            del self._per_address[address]

    def peers(self, address: str) -> int:
        """Open connections of `address` other than the caller's own (which is counted)."""
        return max(0, self._per_address.get(address, 0) - 1)

    def waiting(self, connection: Evictable) -> None:
        """`connection` now waits for a request head: it may be closed to make room."""
        self._idle.pop(connection, None)
        self._idle[connection] = None

    def busy(self, connection: Evictable) -> None:
        """`connection` has a request in flight, or was upgraded: never closed to make room."""
        self._idle.pop(connection, None)

    def _make_room(self) -> bool:
        idle = self._idle
        if not idle:
            return False
        oldest = next(iter(idle))
        del idle[oldest]
        self.evicted += 1
        # Its descriptor is freed when the transport closes (this loop iteration); until its
        # connection_lost releases it, the count is one over the budget: the reserve's job.
        oldest.evict()
        return True
