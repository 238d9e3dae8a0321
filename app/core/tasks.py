"""Background tasks: the one way to stop one.

Timeouts in this codebase are `asyncio.timeout`, never `asyncio.wait_for`: on Python 3.11 a
`wait_for` whose awaitable completes in the iteration its task is cancelled returns normally
and drops the cancellation, so a loop that waits for "a wake or a timeout" and is stopped as it
is woken runs on forever (a shutdown that never ends; tests/test_shutdown.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (if any) and wait until it has finished unwinding."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        # The task's own cancellation is what we asked for; our caller's is not ours to
        # swallow (a `wait_for` around a stop would otherwise never time out).
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Until `event` is set (True) or `timeout` seconds have passed (False).

    The "a wake or a timeout" of every background loop, with `asyncio.timeout`: a loop
    stopped as it is woken stops (see the module docstring)."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


T = TypeVar("T")

# How long a background round may still take once its task is being stopped.
ROUND_GRACE = 5.0


async def uninterrupted(work: Awaitable[T], grace: float = ROUND_GRACE) -> T:
    """Await one round of a background loop so that stopping the loop lets the round finish.

    Cancelling a task in the middle of a database statement leaves the driver's work going on
    without it (aiosqlite's thread then posts its result to a loop that may be closed: a
    traceback at exit) and a pooled connection in an unknown state. So a cancelled caller
    waits up to `grace` seconds for the round, then cancels it, and is cancelled itself.
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        done, _ = await asyncio.wait({task}, timeout=grace)
        if done:
            if not task.cancelled():
                task.exception()  # retrieved: the round's own failure does not matter now
        else:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        raise
