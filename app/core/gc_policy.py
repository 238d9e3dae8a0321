"""The cyclic garbage collector's policy in the serving process: freeze survivors, sweep rarely.

CPython's full (generation 2) collection walks every tracked object that is not frozen, with the
event loop stopped. A node holding 1,000 connections has hundreds of thousands of them, nearly all
long-lived (connections, subscriptions, history), and walking them again finds nothing to free;
yet those pauses set the fixed-rate fan-out's p99 (bench `fanout-1000-rate`: ×2 the bare
library's; ×0.95 with the collector off).

So, like a fourth generation: after each full collection its survivors are frozen (`gc.freeze`,
constant time), and the next full collection walks only what was promoted since. Every
`sweep_interval` seconds the frozen objects are given back (`gc.unfreeze`), so the next full
collection walks everything and frees the cycles that died among them (a closed connection's).
So does the first full collection after as many objects have been frozen since the last sweep
as it left frozen: a client churning connections (about 17 frozen objects, 2.3 KB, left per
closed connection until a sweep) cannot make the node hold more than its live heap again,
however fast it churns. What each freeze adds is counted as it is frozen (the young survivors
of that collection, a short list); the frozen set itself is never counted outside a sweep, as
`gc.get_freeze_count()` walks all of it (2–10 ms at 300,000 objects: a pause of its own).
Garbage in a cycle thus outlives its death by up to one interval or one doubling. Reference
counting, which frees almost everything, is untouched.

Process-wide, like the collector: `install` once in the process that serves (`Service.run`; tests
start many services in one process and keep Python's defaults). `GC_SWEEP_INTERVAL=0` keeps
Python's behaviour, with only the start-up heap frozen.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any

# A sweep is also due once the frozen set has grown this many times since the last one.
GROWTH = 2


@dataclass
class GcStats:
    """What the collector did since `install`, by generation (read by /metrics)."""

    collections: list[int] = field(default_factory=lambda: [0, 0, 0])
    pause_seconds: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    max_pause_seconds: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    sweeps: int = 0  # full collections that walked the frozen objects too
    frozen: int = 0  # objects frozen since the last sweep (or start-up), counted as frozen


class GcPolicy:
    def __init__(self, sweep_interval: float, clock: Any = time.monotonic) -> None:
        self.sweep_interval = sweep_interval
        self.stats = GcStats()
        self._clock = clock
        self._started = 0.0
        self._swept_at = 0.0
        self._sweeping = False  # the frozen objects were given back: the next full one sweeps
        self._frozen_after_sweep = 0  # the frozen set's size after the last sweep (or start-up)

    def install(self) -> None:
        """Collect and freeze what start-up built; from now on follow the policy."""
        gc.collect()
        gc.freeze()
        self._swept_at = self._clock()
        self._frozen_after_sweep = self.stats.frozen = gc.get_freeze_count()
        gc.callbacks.append(self._on_gc)

    def uninstall(self) -> None:
        """Back to Python's behaviour: everything frozen is given back to the collector."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        gc.unfreeze()

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # Called by the interpreter around every collection, on whichever thread triggered it:
        # no allocation-heavy work, no locks. freeze/unfreeze only splice the collector's lists.
        generation = info["generation"]
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        stats = self.stats
        stats.collections[generation] += 1
        stats.pause_seconds[generation] += pause
        if pause > stats.max_pause_seconds[generation]:
            stats.max_pause_seconds[generation] = pause
        if generation != 2 or self.sweep_interval <= 0:
            return
        now = self._clock()
        if self._sweeping:
            # The sweep has walked everything; the one time the frozen set is counted.
            self._sweeping = False
            self._swept_at = now
            stats.sweeps += 1
            gc.freeze()
            self._frozen_after_sweep = stats.frozen = gc.get_freeze_count()
            return
        # After a full collection the young generations are empty: generation 2's unfrozen
        # objects are exactly what this freeze would add.
        adding = len(gc.get_objects(generation=2))
        if (
            now - self._swept_at >= self.sweep_interval
            or stats.frozen + adding >= GROWTH * self._frozen_after_sweep
        ):
            # Give the frozen objects back now, so the *next* full collection (when Python's
            # own thresholds call for it) walks everything once.
            gc.unfreeze()
            self._sweeping = True
        else:
            gc.freeze()
            stats.frozen += adding


_installed: GcPolicy | None = None


def install(sweep_interval: float) -> GcPolicy:
    """Install the policy for this process (once; a second call returns the first)."""
    global _installed
    if _installed is None:
        _installed = GcPolicy(sweep_interval)
        _installed.install()
    return _installed


def uninstall() -> None:
    global _installed
    if _installed is not None:
        _installed.uninstall()
        _installed = None


def installed() -> GcPolicy | None:
    return _installed
