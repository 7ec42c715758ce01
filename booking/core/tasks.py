"""Stopping a background task for good."""

from __future__ import annotations

import asyncio

STOP_TRIES = 20


async def stop(task: asyncio.Task[object]) -> None:
    """Cancel `task` and wait until it has ended, cancelling again while it runs on.

    One cancel is not always enough: on Python 3.11 a cancellation that arrives just as an
    inner `wait_for` completes can be lost (fixed in 3.12), and a loop like the sweeper's then
    carries on. Seen once in the suite, where a test waited for the sweeper forever; each
    further try waits a second."""
    for _ in range(STOP_TRIES):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved
