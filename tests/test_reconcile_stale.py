"""A sync of the gate never writes back what it read before a newer change.

A sync reads Postgres, then writes Redis. Each test stops a sync between the two (an
asyncio.Event in a gate of the test's own process), lets the service commit a change and
apply it to the gate meanwhile, then lets the sync finish: the change must survive.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from conftest import OPERATOR, SweeperPaused, cancel, gate_left, grab, make_course, unique
from inprocess import PENDING_TIMEOUT_S, course_row

from booking.seats import SeatGate, course_keys
from booking.seats.reconcile import CourseLoader, reconcile_course


class PausedGate(SeatGate):
    """A gate whose first sync stops after the ledger was read, until `resume` is set."""

    def __init__(self, redis: Any) -> None:
        super().__init__(redis)
        self.reached = asyncio.Event()
        self.resume = asyncio.Event()
        self.syncs = 0

    async def sync(self, *args: Any, **kwargs: Any) -> Any:
        self.syncs += 1
        if self.syncs == 1:
            self.reached.set()
            await self.resume.wait()
        return await super().sync(*args, **kwargs)


async def paused_sync(gate: PausedGate, db: Any, course_id: int) -> asyncio.Task[Any]:
    """A reconciler's sync of the course, stopped between its Postgres read and its write."""
    task = asyncio.create_task(reconcile_course(db, gate, course_id, PENDING_TIMEOUT_S))
    await gate.reached.wait()
    return task


async def test_a_cancel_committed_during_a_sync_is_not_undone(http, db, redis):
    course = await make_course(http, capacity=3)
    who = unique("leaver")
    booking = (await grab(http, course["id"], who)).json()
    gate = PausedGate(redis)
    async with SweeperPaused(redis):
        sync = await paused_sync(gate, db, course["id"])  # has read: the booking is active
        cancelled = await cancel(http, booking["id"], who)  # the service frees the seat
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert await gate_left(redis, course["id"]) == 3
        gate.resume.set()
        await sync
        holders = await redis.hgetall(course_keys(course["id"])[1])
        left = await gate_left(redis, course["id"])
        again = await grab(http, course["id"], who)
    await gate.close()

    assert holders == {} and left == 3, "the cancelled seat came back"
    assert again.status_code == 201 and again.json()["id"] != booking["id"]


async def test_a_postponed_opening_is_not_undone_by_a_sync_that_read_before_it(http, db, redis):
    course = await make_course(http, capacity=3)  # on sale now
    later = datetime.now(UTC) + timedelta(hours=1)
    gate = PausedGate(redis)
    async with SweeperPaused(redis):
        sync = await paused_sync(gate, db, course["id"])  # has read: on sale now
        patched = await http.patch(f"/v1/courses/{course['id']}", headers=OPERATOR,
                                   json={"sales_open_at": later.isoformat()})
        assert patched.status_code == 200, patched.text
        gate.resume.set()
        await sync
        opens_at_ms = int(await redis.hget(course_keys(course["id"])[0], "opens_at"))
        early = await grab(http, course["id"], unique("early"))
    await gate.close()

    assert abs(opens_at_ms - later.timestamp() * 1000) <= 1
    assert early.status_code == 409 and early.json()["code"] == "not_open"


async def test_a_load_asked_for_after_a_change_reads_after_it(db, redis):
    """One process: a PATCH asks the loader for a reload while a load that read the course
    before the PATCH committed is still running. That load must not answer for the PATCH."""
    course_id = await course_row(db, capacity=3)
    later = datetime.now(UTC) + timedelta(hours=1)
    gate = PausedGate(redis)
    loader = CourseLoader(db, gate, PENDING_TIMEOUT_S)
    async with SweeperPaused(redis):
        first = asyncio.create_task(loader.load(course_id))
        await gate.reached.wait()  # it has read: on sale now
        await db.execute("UPDATE courses SET sales_open_at = $2 WHERE id = $1", course_id, later)
        after_patch = asyncio.create_task(loader.load(course_id))  # what the PATCH asks
        await asyncio.sleep(0)  # let it join the load in flight, as it would
        gate.resume.set()
        await asyncio.gather(first, after_patch)
        opens_at_ms = int(await redis.hget(course_keys(course_id)[0], "opens_at"))
    await gate.close()

    assert abs(opens_at_ms - later.timestamp() * 1000) <= 1
