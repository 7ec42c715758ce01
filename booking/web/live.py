"""Live seats over HTTP: Server-Sent Events streams, and the JSON the script polls instead.

- `GET /courses/{id}/live`: a `seats` event at once (the snapshot), then one on each change, at
  most one per course per second; a comment after 10 s of silence; `retry` on the first event.
- `GET /live?courses=1,2,3` (up to 200 ids): the same for several courses on one stream (the
  venues' dashboard).
- `GET /courses/{id}/seats`: the same JSON as one object, cacheable for a second.

Past `BOOKING_SSE_MAX_STREAMS` streams in this process a stream is refused with 503 and
`Retry-After`, and the script polls `/seats`. These answer errors as JSON `{code, detail}`
(the script reads them, never a person), and are left out of CSRF and compression (site.py).
The data and the rules are booking/live.py's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

from litestar import get
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from booking.core.errors import EXCEPTION_HANDLERS, Invalid, Unavailable
from booking.live import MAX_COURSES, LiveSeats, LiveStream, SeatState

RETRY_MS = 3000  # how long a browser waits before it reconnects a dropped stream
BUSY_RETRY_S = 60
EVENT = "seats"
# JSON errors on these routes, not the pages' error page
JSON_ERRORS: dict[str, Any] = {"exception_handlers": EXCEPTION_HANDLERS}


@get("/courses/{course_id:int}/live", **JSON_ERRORS)
async def course_live(course_id: FromPath[int],
                      live: NamedDependency[LiveSeats]) -> ServerSentEvent:
    """One course's seats as they change."""
    return await _stream(live, [course_id])


@get("/live", **JSON_ERRORS)
async def courses_live(
        live: NamedDependency[LiveSeats],
        ids: Annotated[str, QueryParameter(name="courses", max_length=MAX_COURSES * 21)],
) -> ServerSentEvent:
    """Several courses' seats on one stream: `?courses=1,2,3` (`courses` is the name of a
    service too, hence the alias)."""
    return await _stream(live, _course_ids(ids))


@get("/courses/{course_id:int}/seats", cache_control=CacheControlHeader(max_age=1),
     **JSON_ERRORS)
async def course_seats(course_id: FromPath[int], live: NamedDependency[LiveSeats]) -> SeatState:
    """One course's seats now (what a browser without a stream polls)."""
    (state,) = await live.states([course_id])
    return state


def _course_ids(text: str) -> list[int]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or len(parts) > MAX_COURSES:
        raise Invalid(f"courses takes 1 to {MAX_COURSES} course ids, separated by commas.")
    try:
        return list(dict.fromkeys(int(part) for part in parts))
    except ValueError:
        raise Invalid("courses takes course ids (numbers), separated by commas.") from None


async def _stream(live: LiveSeats, course_ids: Sequence[int]) -> ServerSentEvent:
    if live.full:
        raise Unavailable("Too many live streams here; poll /courses/{id}/seats instead.",
                          code="too_many_streams", headers={"Retry-After": str(BUSY_RETRY_S)})
    stream = live.stream(await live.states(course_ids))
    return ServerSentEvent(_events(stream))


async def _events(stream: LiveStream) -> AsyncIterator[ServerSentEventMessage]:
    """The stream as SSE messages. `with stream` opens and closes its bookkeeping without an
    await, whichever way the generator ends (see booking/live.py)."""
    with stream:
        for i, payload in enumerate(stream.snapshot):
            yield ServerSentEventMessage(data=payload.decode(), event=EVENT,
                                         retry=RETRY_MS if i == 0 else None)
        async for payloads in stream:
            if payloads is None:
                yield ServerSentEventMessage(data=None, comment="keep-alive")
                continue
            for payload in payloads:
                yield ServerSentEventMessage(data=payload.decode(), event=EVENT)


HANDLERS: list[Any] = [course_live, courses_live, course_seats]
