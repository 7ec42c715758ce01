"""The venue's check-in desk `/venue/checkin`: one field taking what a USB or Bluetooth scanner
types (the QR's token and Enter), the 8-character code a resident reads out, or (with desk.js,
where the browser has `BarcodeDetector`) the camera. The POST is `POST /v1/checkins`, then a
303 to this page with the answer in big words above the form, ready for the next person.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any
from urllib.parse import urlencode

import msgspec
from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromQuery
from litestar.response import Redirect, Template

from booking.attendance import REFUSALS, Attendance, AttendanceOut
from booking.core.errors import ApiError
from booking.web.render import page, see_other, staff_sign_in_first, visitor

DESK = "/venue/checkin"
CODE_SHAPE = 8  # a typed code: 8 characters once spaces and dashes are gone; a token is 38
Form = Body(media_type=RequestEncodingType.URL_ENCODED)


class TokenForm(msgspec.Struct):
    token: str = ""


def _is_code(typed: str) -> bool:
    return len(typed.replace(" ", "").replace("-", "")) == CODE_SHAPE


def _answer_path(found: AttendanceOut) -> str:
    query = {"result": "checked_in" if found.first else "already_checked_in",
             "booking": found.booking_id, "date": found.lesson_date.isoformat()}
    return f"{DESK}?{urlencode(query)}"


@post(DESK, name="venue_checkin_post", status_code=303)
async def check_in_from_desk(request: Request, attendance: NamedDependency[Attendance],
                             data: Annotated[TokenForm, Form]) -> Template | Redirect:
    """`POST /v1/checkins` with the token or the code typed, then 303 to the answer."""
    seen = visitor(request)
    if seen.venue_id is None or seen.user is None:
        return staff_sign_in_first(request, DESK)
    typed = data.token.strip()
    if not typed:
        _ = seen.words.gettext
        return page(request, "venue_checkin.html", status_code=400, result=None,
                    error=_("请扫描签到二维码，或输入 8 位签到码。"))
    kind = {"code": typed} if _is_code(typed) else {"token": typed}
    try:
        found = await attendance.check_in(seen.venue_id, seen.user.sub, **kind)
    except ApiError as exc:
        reason = exc.code if exc.code in REFUSALS else "invalid_token"
        return see_other(f"{DESK}?{urlencode({'result': 'refused', 'reason': reason})}", request)
    return see_other(_answer_path(found), request)


@get(DESK, name="venue_checkin")
async def desk(request: Request, attendance: NamedDependency[Attendance],
               result: FromQuery[str | None] = None, booking: FromQuery[str | None] = None,
               date: FromQuery[str | None] = None,
               reason: FromQuery[str | None] = None) -> Template | Redirect:
    """The form, and above it the answer to the last check-in (if any)."""
    venue_id = visitor(request).venue_id
    if venue_id is None:
        return staff_sign_in_first(request, DESK)
    shown: AttendanceOut | None = None
    if result in ("checked_in", "already_checked_in"):
        shown = await _checked(attendance, venue_id, booking, date)
        if shown is None:
            result = None
    elif result != "refused" or reason not in REFUSALS:
        result = None
    return page(request, "venue_checkin.html", result=result, attendance=shown, reason=reason,
                error=None)


async def _checked(attendance: Attendance, venue_id: int, booking: str | None,
                   date: str | None) -> AttendanceOut | None:
    """The check-in the answer's address names, if it is one of this venue's."""
    try:
        booking_id, lesson_date = uuid.UUID(booking or ""), dt.date.fromisoformat(date or "")
    except ValueError:
        return None
    return await attendance.one(venue_id, booking_id, lesson_date)


HANDLERS: list[Any] = [desk, check_in_from_desk]
