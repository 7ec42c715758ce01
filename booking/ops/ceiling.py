"""The bare stack `booking bench` measures its ceiling on: one Litestar POST handler answering
a msgspec struct, no I/O, served by uvicorn with the options of `booking serve`.

`python -m booking.ops.ceiling --port P --workers W` serves it on 127.0.0.1. The route has the
shape of a grab (`POST /v1/courses/{id}/bookings`, no body, 201), so the same wrk requests can
rush it.
"""

from __future__ import annotations

import argparse

import msgspec
from litestar import Litestar, post

from booking.ops.event_loop import UVICORN_LOOP
from booking.ops.http_protocol import UVICORN_HTTP


class Answer(msgspec.Struct):
    id: str
    course_id: int
    status: str


@post("/v1/courses/{course_id:int}/bookings", status_code=201)
async def grab(course_id: int) -> Answer:
    return Answer(id="00000000-0000-0000-0000-000000000000", course_id=course_id,
                  status="confirmed")


def create_app() -> Litestar:
    return Litestar(route_handlers=[grab], openapi_config=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    import uvicorn

    # The server options of booking/ops/serve.py, so that only the app differs.
    uvicorn.run("booking.ops.ceiling:create_app", factory=True, host="127.0.0.1",
                port=args.port, workers=args.workers, access_log=False, log_level="warning",
                log_config=None, loop=UVICORN_LOOP, http=UVICORN_HTTP, backlog=4096)


if __name__ == "__main__":
    main()
