"""The collector policy of the serving process: survivors frozen, a sweep every interval.

In-process (the policy is process-wide, like the collector): each test installs a policy with a
clock of its own, drives collections with `gc.collect()` and uninstalls it, which gives every
frozen object back.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from app.core.gc_policy import GcPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Node:
    """A weak-referenceable object in a reference cycle: only the cyclic GC frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def policy(clock: Clock) -> Iterator[GcPolicy]:
    policy = GcPolicy(sweep_interval=60, clock=clock)
    policy.install()
    try:
        yield policy
    finally:
        policy.uninstall()


def cycle() -> weakref.ref[Node]:
    return weakref.ref(Node())


def test_young_garbage_is_freed_at_once(policy: GcPolicy) -> None:
    dead = cycle()
    gc.collect()
    assert dead() is None


def test_survivors_are_frozen_and_swept_after_the_interval(policy: GcPolicy, clock: Clock) -> None:
    survivor = Node()
    alive = weakref.ref(survivor)
    gc.collect()  # survives a full collection: frozen with the rest of the long-lived heap
    assert gc.get_freeze_count() > 0
    del survivor  # dies in a cycle among the frozen objects
    gc.collect()
    gc.collect()
    assert alive() is not None  # not walked: that is the point
    assert policy.stats.sweeps == 0

    clock.now += 61
    gc.collect()  # the interval is over: the frozen objects are given back...
    assert gc.get_freeze_count() == 0
    gc.collect()  # ...and this full collection walks them
    assert alive() is None
    assert policy.stats.sweeps == 1
    assert gc.get_freeze_count() > 0  # its survivors frozen again

    # The next sweep is one interval after this one.
    survivor = Node()
    alive = weakref.ref(survivor)
    gc.collect()
    del survivor
    clock.now += 30
    gc.collect()
    assert alive() is not None
    clock.now += 31
    gc.collect()
    gc.collect()
    assert alive() is None and policy.stats.sweeps == 2


def test_pauses_are_counted_by_generation(policy: GcPolicy) -> None:
    before = list(policy.stats.collections)
    gc.collect(0)
    gc.collect(1)
    gc.collect()
    stats = policy.stats
    assert [a - b for a, b in zip(stats.collections, before, strict=True)] == [1, 1, 1]
    assert stats.pause_seconds[2] > 0
    assert 0 < stats.max_pause_seconds[2] <= stats.pause_seconds[2]


def test_uninstall_gives_everything_back(clock: Clock) -> None:
    policy = GcPolicy(sweep_interval=60, clock=clock)
    policy.install()
    survivor = Node()
    alive = weakref.ref(survivor)
    gc.collect()
    del survivor
    policy.uninstall()
    assert gc.get_freeze_count() == 0 and policy._on_gc not in gc.callbacks
    gc.collect()
    assert alive() is None


def test_interval_zero_keeps_pythons_collector(clock: Clock) -> None:
    policy = GcPolicy(sweep_interval=0, clock=clock)
    policy.install()  # the start-up heap is frozen all the same
    try:
        frozen = gc.get_freeze_count()
        survivor = Node()
        alive = weakref.ref(survivor)
        gc.collect()
        assert gc.get_freeze_count() == frozen  # survivors stay where Python keeps them
        del survivor
        gc.collect()
        assert alive() is None
    finally:
        policy.uninstall()


def test_a_frozen_set_that_doubles_is_swept_before_the_interval(policy: GcPolicy) -> None:
    """Churn (what dies among frozen objects) cannot pile up for a whole interval."""
    survivor = Node()
    alive = weakref.ref(survivor)
    gc.collect()  # frozen
    del survivor  # dead, in a cycle, among the frozen objects
    frozen = policy.stats.frozen
    gc.disable()  # no automatic collection while they are made: the next one is ours
    try:
        held = [[] for _ in range(frozen + 1000)]  # as many again survive the next collection
    finally:
        gc.enable()
    gc.collect()  # the sweep is due (no time has passed): everything is given back
    assert gc.get_freeze_count() == 0
    gc.collect()  # the sweep
    assert alive() is None and policy.stats.sweeps == 1
    assert policy.stats.frozen == gc.get_freeze_count() > frozen
    del held


def test_what_is_frozen_is_counted_as_it_is_frozen(
    policy: GcPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting the frozen set walks all of it (a pause of its own): never outside a sweep;
    the tally adds up what each freeze added instead."""
    counted: list[int] = []
    count = gc.get_freeze_count

    def counting() -> int:
        counted.append(1)
        return count()

    before = policy.stats.frozen
    kept = []
    monkeypatch.setattr(gc, "get_freeze_count", counting)
    for _ in range(20):
        kept.append([[] for _ in range(50)])
        gc.collect()
    assert counted == [] and policy.stats.sweeps == 0
    monkeypatch.undo()
    # Each round froze its 51 new lists, among whatever else had been promoted meanwhile.
    assert policy.stats.frozen >= before + 20 * 51
    assert abs(policy.stats.frozen - gc.get_freeze_count()) <= 0.05 * gc.get_freeze_count()
