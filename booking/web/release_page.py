"""A release's page: its mode, times and courses; in a draw mode (`window`, `lottery`) the
ranked-wish form, the receipt, and after the draw each wish's outcome and the published files.

Every action has its `/v1` twin and calls the same service: the form `form#entry` is
`PUT /v1/releases/{id}/entry`, `form#withdraw` is `DELETE .../entry`; the page reads what
`GET /v1/releases/{id}`, `GET /v1/courses/{id}` and `GET .../entry` answer. A saved entry or a
withdrawal answers 303 back to the page (`?done=saved|withdrawn`), which reads the facts fresh;
a refusal shows the page again, answered with the refusal's status, the refusal in words and
the wishes as they were sent, so nothing chosen is lost.

Course pages ask `release_of` for their course's release (kept one second per worker, as the
course rows are) to know whether the draw is pending: then their big button leads here instead
of grabbing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Template

from booking.bookings import BookingOut, Bookings
from booking.core.auth import Principal
from booking.core.errors import ApiError, NotFound, Unprocessable
from booking.core.readcache import ReadCache
from booking.courses import CourseOut, Courses
from booking.releases.entries import Entries, EntryOut, WishOutcome
from booking.releases.service import DRAW_MODES, ReleaseOut, Releases
from booking.web.i18n import Words
from booking.web.render import page, see_other, sign_in_first, visitor

DONE = ("saved", "withdrawn")  # what `?done=` may say after a form
KNOWN_REFUSALS = ("not_open", "entry_closed", "no_wishes", "too_many_wishes", "duplicate_wish",
                  "unknown_course", "no_draw")
MAX_ID_DIGITS = 18  # a course id fits a bigint; anything longer is no course of ours

_releases_seen = ReadCache(ttl_s=1.0)  # the course pages' view of releases, per worker


def release_path(release_id: int, done: str | None = None) -> str:
    query = f"?{urlencode({'done': done})}" if done else ""
    return f"/releases/{release_id}{query}"


def draw_pending(release: ReleaseOut | None) -> bool:
    """A course of this release waits for a draw: its seats are not grabbed but drawn."""
    return release is not None and release.mode in DRAW_MODES and release.state != "drawn"


async def release_of(course: CourseOut, releases: Releases) -> ReleaseOut | None:
    """The release a course opens in (None: none), at most a second old, as the course is."""
    release_id = course.release_id
    if release_id is None:
        return None
    return await _releases_seen.get(("release", release_id), lambda: releases.one(release_id))


def duration(words: Words, seconds: int) -> str:
    """`2 天`, `5 小时`, `30 分钟` or `45 秒`: the largest unit that divides it evenly."""
    _ = words.gettext
    for unit, text in ((86400, _("%(n)s 天")), (3600, _("%(n)s 小时")),
                       (60, _("%(n)s 分钟"))):
        if seconds >= unit and seconds % unit == 0:
            return text % {"n": seconds // unit}
    return _("%(n)s 秒钟") % {"n": seconds}


@dataclass(frozen=True, slots=True)
class Wish:
    """One wish of the visitor's entry: its rank, its course, and once drawn its outcome (with
    the booking a won wish made)."""

    rank: int
    course: CourseOut | None
    course_id: int
    result: WishOutcome | None = None
    booking: BookingOut | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str
    text: str


def refusal_words(words: Words, error: ApiError, release: ReleaseOut,
                  opens_at: datetime) -> Refusal:
    """A refused entry or withdrawal, in a sentence of the visitor's language."""
    _ = words.gettext
    code = error.code if error.code in KNOWN_REFUSALS else "unavailable"
    limit = release.max_wishes or 1
    texts = {
        "not_open": _("还没到填写志愿的时间。您可以在 %(when)s 起填写。")
        % {"when": words.when(opens_at)},
        "entry_closed": _("填写志愿已于 %(when)s 截止，不能再提交、修改或撤回。")
        % {"when": words.when(release.closes_at or opens_at)},
        "no_wishes": _("请至少选择第 1 志愿。"),
        "too_many_wishes": _("最多只能填 %(n)s 个志愿。") % {"n": limit},
        "duplicate_wish": _("同一门课只能填一次。请换一门课，或把重复的志愿留空。"),
        "unknown_course": _("选的课程不在这次报名里，请从列表中选择。"),
        "no_draw": _("这次是先到先得，不用填写志愿，请到课程页面抢座。"),
        "unavailable": _("系统繁忙，刚才没有保存。请再试一次。"),
    }
    return Refusal(code, texts[code])


def _as_course_id(value: Any) -> int | None:
    """A `wish` field's course id; None for an empty rank (or anything that is no id)."""
    text = value.strip() if isinstance(value, str) else ""
    return int(text) if text.isdigit() and len(text) <= MAX_ID_DIGITS else None


def _chosen_wishes(values: list[Any]) -> list[int]:
    """The course ids of the form's `wish` fields, best first; empty ranks left out."""
    wishes = []
    for value in values:
        if isinstance(value, str) and not value.strip():
            continue
        course_id = _as_course_id(value)
        if course_id is None:
            raise Unprocessable("Not a course of this release.", code="unknown_course")
        wishes.append(course_id)
    return wishes


def _resident(request: Request) -> Principal | None:
    seen = visitor(request)
    return seen.user if seen.resident_id is not None else None


async def _entry(entries: Entries, release: ReleaseOut, resident_id: str | None) -> EntryOut | None:
    if release.mode not in DRAW_MODES or resident_id is None:
        return None
    try:
        return await entries.one(release.id, resident_id)
    except NotFound:
        return None


async def _wishes(entry: EntryOut | None, by_id: dict[int, CourseOut], resident_id: str | None,
                  bookings: Bookings) -> list[Wish]:
    """The entry's wishes in rank order, with their outcomes once drawn."""
    if entry is None:
        return []
    outcomes = {result.course_id: result for result in entry.results or []}
    held: dict[str, BookingOut] = {}
    if resident_id is not None and any(r.booking_id for r in outcomes.values()):
        held = {b.id: b for b in await bookings.of_resident(resident_id)}
    shown = []
    for rank, course_id in enumerate(entry.wishes, start=1):
        result = outcomes.get(course_id)
        booking = held.get(result.booking_id) if result and result.booking_id else None
        shown.append(Wish(rank, by_id.get(course_id), course_id, result, booking))
    return shown


async def release_view(request: Request, release_id: int, *, releases: Releases,
                       entries: Entries, courses: Courses, bookings: Bookings,
                       done: str | None = None, error: ApiError | None = None,
                       sent: list[int | None] | None = None) -> Template:
    """The release page; after a refused form, `error` and the wishes `sent` (by rank)."""
    release = await releases.one(release_id)
    seen = visitor(request)
    resident = _resident(request)
    resident_id = resident.sub if resident else None
    listed = [await courses.one(course_id) for course_id in release.course_ids]
    by_id = {course.id: course for course in listed}
    entry = await _entry(entries, release, resident_id)
    now = datetime.now(UTC)
    tier = resident.tier if resident else None
    my_opens_at = next((t.opens_at for t in release.tiers if t.name == tier), release.opens_at)
    is_draw = release.mode in DRAW_MODES
    open_for_me = is_draw and resident is not None and (
        release.state == "open" or (release.state == "scheduled" and my_opens_at <= now))
    ranks = min(release.max_wishes or 1, len(listed)) if is_draw else 0
    chosen: list[int | None] = list(sent if sent is not None else entry.wishes if entry else [])
    chosen = (chosen + [None] * ranks)[:ranks]
    refusal = refusal_words(seen.words, error, release, my_opens_at) if error else None
    return page(
        request, "release.html", status_code=error.status_code if error else 200,
        release=release, courses=listed, entry=entry, is_draw=is_draw,
        wishes=await _wishes(entry, by_id, resident_id, bookings),
        open_for_me=open_for_me, my_opens_at=my_opens_at, now=now, ranks=ranks, chosen=chosen,
        refusal=refusal, done=done if done in DONE and error is None else None,
        paid=any(course.price_cents for course in listed),
        sign_in="/login?" + urlencode({"next": release_path(release.id)}),
        site=str(request.base_url).rstrip("/"),
        window=duration(seen.words, release.window_s) if release.window_s else None,
        claim_hold=duration(seen.words, release.claim_hold_s) if release.claim_hold_s else None)


# --- the page and its two forms ---------------------------------------------------------------

@get("/releases/{release_id:int}", name="release")
async def release_page(request: Request, release_id: FromPath[int],
                       releases: NamedDependency[Releases], entries: NamedDependency[Entries],
                       courses: NamedDependency[Courses], bookings: NamedDependency[Bookings],
                       done: FromQuery[str | None] = None) -> Template:
    """A release: its mode, times and courses; in a draw mode the visitor's entry (the form
    while entries are open, the receipt, each wish's outcome after the draw)."""
    return await release_view(request, release_id, releases=releases, entries=entries,
                              courses=courses, bookings=bookings, done=done)


@post("/releases/{release_id:int}/entry", name="enter_release", status_code=303)
async def enter_from_page(request: Request, release_id: FromPath[int],
                          releases: NamedDependency[Releases],
                          entries: NamedDependency[Entries], courses: NamedDependency[Courses],
                          bookings: NamedDependency[Bookings]) -> Redirect | Template:
    """`form#entry`: the ranked wishes (`wish`, best first; empty ranks skipped) as
    `PUT /v1/releases/{id}/entry` takes them, then 303 back to the page with the receipt."""
    resident = _resident(request)
    if resident is None:
        return sign_in_first(request, release_path(release_id))
    values = (await request.form()).getall("wish", [])
    try:
        await entries.put(release_id, resident, _chosen_wishes(values))
    except NotFound:
        raise  # no such release: the 404 page
    except ApiError as exc:
        return await release_view(request, release_id, releases=releases, entries=entries,
                                  courses=courses, bookings=bookings, error=exc,
                                  sent=[_as_course_id(value) for value in values])
    return see_other(release_path(release_id, "saved"), request)


@post("/releases/{release_id:int}/withdraw", name="withdraw_from_release", status_code=303)
async def withdraw_from_page(request: Request, release_id: FromPath[int],
                             releases: NamedDependency[Releases],
                             entries: NamedDependency[Entries],
                             courses: NamedDependency[Courses],
                             bookings: NamedDependency[Bookings]) -> Redirect | Template:
    """`form#withdraw`: `DELETE /v1/releases/{id}/entry`, then 303 back to the page. An entry
    gone already (a second tap) is not an error: the page shows the facts."""
    resident = _resident(request)
    if resident is None:
        return sign_in_first(request, release_path(release_id))
    await releases.one(release_id)  # no such release: the 404 page
    try:
        with contextlib.suppress(NotFound):
            await entries.withdraw(release_id, resident)
    except ApiError as exc:
        return await release_view(request, release_id, releases=releases, entries=entries,
                                  courses=courses, bookings=bookings, error=exc)
    return see_other(release_path(release_id, "withdrawn"), request)


HANDLERS: list[Any] = [release_page, enter_from_page, withdraw_from_page]
