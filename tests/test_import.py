"""Importing a term from a spreadsheet: on the page `/venue/import` (upload, refused rows or a
preview, then `form#import-confirm`) and through `POST /v1/venues/{id}/imports`, against the
session's real service, checked in Postgres and in the seat gate."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone

import httpx
import openpyxl
from conftest import OPERATOR, SECRET, gate_left, grab, make_venue, resident, unique
from nojs import page_client

from booking.core.auth import mint

BEIJING = timezone(timedelta(hours=8))
HEADER_ZH = ["编号", "课程名称", "类别", "老师", "简介", "开课时间", "结束时间", "次数", "名额",
             "费用(元)", "开抢时间"]
HEADER_EN = ["code", "title", "category", "teacher", "description", "starts_at", "ends_at",
             "lessons", "capacity", "fee_yuan", "sales_open_at"]
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def staff_token(venue_id: int) -> str:
    return mint(SECRET, "venue", unique("staff"), venue_id=venue_id)


def staff(venue_id: int) -> dict[str, str]:
    return {"Authorization": f"Bearer {staff_token(venue_id)}"}


def beijing(moment: datetime) -> str:
    return moment.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M")


def term_rows(n: int, prefix: str | None = None, capacity: int = 30) -> list[list[str]]:
    """`n` good rows (codes unique to this test), sales open already, starting next week."""
    prefix = prefix or unique("T")
    now = datetime.now(BEIJING)
    rows = []
    for i in range(n):
        starts = (now + timedelta(days=7 + i)).replace(hour=19, minute=0, second=0, microsecond=0)
        rows.append([f"{prefix}-{i + 1:02d}", f"书法入门 {i + 1}", "书法", "王老师", "零基础",
                     beijing(starts), beijing(starts + timedelta(hours=2)), "12",
                     str(capacity), "120.5" if i == 0 else "0",
                     beijing(now - timedelta(minutes=5))])
    return rows


def csv_of(rows: list[list[str]], header: list[str] = HEADER_ZH,
           encoding: str = "utf-8-sig") -> bytes:
    text = io.StringIO(newline="")
    csv.writer(text, lineterminator="\r\n").writerows([header, *rows])
    return text.getvalue().encode(encoding)


def xlsx_of(rows: list[list[str]], header: list[str] = HEADER_EN) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(header)
    for row in rows:  # numbers as numbers, as a spreadsheet holds them
        sheet.append([int(cell) if cell.isdigit() else cell for cell in row])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


async def api_import(http: httpx.AsyncClient, venue_id: int, content: bytes,
                     headers: dict[str, str], *, dry_run: bool = False,
                     media_type: str = "text/csv") -> httpx.Response:
    return await http.post(f"/v1/venues/{venue_id}/imports",
                           params={"dry_run": "true"} if dry_run else None, content=content,
                           headers={**headers, "Content-Type": media_type})


async def courses_of(db, venue_id: int) -> list:
    return await db.fetch("SELECT id, code, title, capacity, price_cents, lessons, starts_at "
                          "FROM courses WHERE venue_id = $1 ORDER BY code", venue_id)


@asynccontextmanager
async def desk(server: str, venue_id: int | None) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like client signed in as staff of `venue_id` (None: as a resident)."""
    token = staff_token(venue_id) if venue_id else mint(SECRET, "resident", unique("r"))
    async with page_client(server, token) as client:
        shown = await client.get("/venue/import")
        if venue_id:
            assert shown.status_code == 200, shown.text
        yield client


async def upload(client: httpx.AsyncClient, content: bytes,
                 name: str = "term.csv") -> httpx.Response:
    csrf = client.cookies.get("csrftoken")
    assert csrf
    return await client.post("/venue/import", data={"_csrf_token": csrf},
                             files={"file": (name, content, "application/octet-stream")})


async def confirm(client: httpx.AsyncClient, preview: httpx.Response) -> httpx.Response:
    """Send `form#import-confirm` of a preview page as a browser would (multipart)."""
    form = re.search(r'<form[^>]*id="import-confirm".*?</form>', preview.text, re.S)
    assert form, preview.text
    action = re.search(r'action="([^"]+)"', form.group(0)).group(1)
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"',
                             form.group(0)))
    return await client.post(action, files={name: (None, value) for name, value in fields.items()})


async def test_bad_row_3_is_listed_and_nothing_is_written(server, http, db):
    venue_id = await make_venue(http)
    rows = term_rows(3)
    rows[1][8] = "0"  # row 3 of the sheet: no seats
    rows[1][6] = "明天晚上"  # and an end time no one can read
    content = csv_of(rows)
    async with desk(server, venue_id) as client:
        page = await upload(client, content)
    assert page.status_code == 422
    assert 'data-row="3"' in page.text
    assert 'data-row="2"' not in page.text and 'data-row="4"' not in page.text
    assert 'id="import-confirm"' not in page.text
    answer = await api_import(http, venue_id, content, staff(venue_id))
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["code"] == "invalid_rows"
    assert {(item["row"], item["column"]) for item in body["rows"]} == {
        (3, "capacity"), (3, "ends_at")}
    assert await courses_of(db, venue_id) == []


async def test_a_clean_file_is_written_only_when_confirmed(server, http, db, redis):
    venue_id = await make_venue(http)
    rows = term_rows(4)
    content = csv_of(rows)
    dry = await api_import(http, venue_id, content, staff(venue_id), dry_run=True)
    assert dry.status_code == 200, dry.text
    assert (dry.json()["create"], dry.json()["update"]) == (4, 0)
    assert [row["row"] for row in dry.json()["rows"]] == [2, 3, 4, 5]
    async with desk(server, venue_id) as client:
        preview = await upload(client, content)
        assert preview.status_code == 200, preview.text
        assert 'id="import-confirm"' in preview.text
        assert preview.text.count('data-action="create"') == 4
        assert await courses_of(db, venue_id) == []
        done = await confirm(client, preview)
        assert done.status_code == 303, done.text
        assert done.headers["location"] == "/venue/import?created=4&updated=0"
        shown = await client.get(done.headers["location"])
        assert 'id="import-done"' in shown.text
    written = await courses_of(db, venue_id)
    assert [row["code"] for row in written] == [row[0] for row in rows]
    first = written[0]
    assert (first["price_cents"], first["lessons"], first["capacity"]) == (12050, 12, 30)
    assert beijing(first["starts_at"]) == rows[0][5]
    for course in written:  # the gate was loaded after the commit: grabbable at once
        assert await gate_left(redis, course["id"]) == 30
    assert (await grab(http, written[1]["id"], unique("first"))).status_code == 201


async def test_a_reupload_in_gb18030_or_xlsx_updates_and_never_duplicates(server, http, db):
    venue_id = await make_venue(http)
    rows = term_rows(3)
    first = await api_import(http, venue_id, csv_of(rows, HEADER_EN, "utf-8"), staff(venue_id))
    assert first.status_code == 200, first.text
    ids = [row["id"] for row in await courses_of(db, venue_id)]
    rows[0][1], rows[2][8] = "书法提高班", "45"
    async with desk(server, venue_id) as client:
        preview = await upload(client, csv_of(rows, encoding="gb18030"))
        assert preview.status_code == 200, preview.text
        assert preview.text.count('data-action="update"') == 3
        assert 'data-action="create"' not in preview.text
        assert (await confirm(client, preview)).status_code == 303
    written = await courses_of(db, venue_id)
    assert [row["id"] for row in written] == ids
    assert written[0]["title"] == "书法提高班" and written[2]["capacity"] == 45
    rows[1][1] = "书法 XLSX"
    again = await api_import(http, venue_id, xlsx_of(rows), staff(venue_id), media_type=XLSX)
    assert again.status_code == 200, again.text
    assert (again.json()["create"], again.json()["update"]) == (0, 3)
    written = await courses_of(db, venue_id)
    assert [row["id"] for row in written] == ids
    assert written[1]["title"] == "书法 XLSX"


async def test_capacity_never_goes_below_the_bookings(server, http, db):
    venue_id = await make_venue(http)
    rows = term_rows(2, capacity=3)
    assert (await api_import(http, venue_id, csv_of(rows), OPERATOR)).status_code == 200
    course_id = (await courses_of(db, venue_id))[1]["id"]
    for who in ("a", "b"):
        assert (await grab(http, course_id, unique(who))).status_code == 201
    rows[1][8] = "1"
    rows[0][1] = "not written either"
    answer = await api_import(http, venue_id, csv_of(rows), staff(venue_id))
    assert answer.status_code == 422, answer.text
    (refused,) = answer.json()["rows"]
    assert (refused["row"], refused["column"], refused["code"]) == (3, "capacity",
                                                                    "below_bookings")
    written = await courses_of(db, venue_id)
    assert [row["capacity"] for row in written] == [3, 3]
    assert written[0]["title"] != "not written either"


async def test_a_reupload_keeps_a_release_courses_opening_and_seats_before_its_draw(
        server, http, db):
    venue_id = await make_venue(http)
    rows = term_rows(2, capacity=3)
    assert (await api_import(http, venue_id, csv_of(rows), OPERATOR)).status_code == 200
    fcfs_course, drawn_course = (row["id"] for row in await courses_of(db, venue_id))
    now = datetime.now(BEIJING)
    for mode, course_id in (("fcfs", fcfs_course), ("lottery", drawn_course)):
        body = {"title": unique("release"), "mode": mode, "course_ids": [course_id],
                "term": unique("term"), "opens_at": (now + timedelta(hours=1)).isoformat()}
        if mode == "lottery":
            body |= {"closes_at": (now + timedelta(hours=2)).isoformat(),
                     "beacon": "sealed digits 0123456789"}
        created = await http.post("/v1/releases", json=body, headers=OPERATOR)
        assert created.status_code == 201, created.text
    opening = {row["id"]: row["sales_open_at"] for row in await db.fetch(
        "SELECT id, sales_open_at FROM courses WHERE venue_id = $1", venue_id)}

    moved = [list(row) for row in rows]
    moved[0][10] = beijing(now - timedelta(minutes=30))  # the fcfs course's opening
    moved[1][8] = "9"  # the lottery course's seats, before its draw
    answer = await api_import(http, venue_id, csv_of(moved), staff(venue_id))
    assert answer.status_code == 422, answer.text
    refusals = [(r["row"], r["column"], r["code"]) for r in answer.json()["rows"]]
    assert refusals == [(3, "capacity", "draw_pending")]
    after = await db.fetch("SELECT id, sales_open_at, capacity FROM courses "
                           "WHERE venue_id = $1", venue_id)
    assert {row["id"]: row["sales_open_at"] for row in after} == opening
    assert [row["capacity"] for row in after] == [3, 3]

    moved[1][8] = "3"  # the same seats: the file applies, the release's openings stay
    applied = await api_import(http, venue_id, csv_of(moved), staff(venue_id))
    assert applied.status_code == 200, applied.text
    after = await db.fetch("SELECT id, sales_open_at FROM courses WHERE venue_id = $1",
                           venue_id)
    assert {row["id"]: row["sales_open_at"] for row in after} == opening


async def test_only_the_venues_own_staff_or_an_operator_may_import(server, http, db):
    venue_id, other = await make_venue(http), await make_venue(http)
    content = csv_of(term_rows(1))
    for headers in (staff(other), resident(unique("r"))):
        answer = await api_import(http, venue_id, content, headers)
        assert answer.status_code == 403, answer.text
    assert (await api_import(http, venue_id, content, {})).status_code == 401
    assert await courses_of(db, venue_id) == []
    async with desk(server, None) as client:  # a resident is sent to the staff sign-in
        page = await client.get("/venue/import")
        assert page.status_code == 303
        assert page.headers["location"].startswith("/venue/login?next=")


async def test_files_too_big_or_too_long_are_refused(server, http, db):
    venue_id = await make_venue(http)
    rows = term_rows(1)
    rows[0][4] = "x" * 4000
    big = csv_of(rows * 600)  # about 2.5 MB
    answer = await api_import(http, venue_id, big, staff(venue_id))
    assert answer.status_code == 413, answer.text
    assert answer.json()["code"] == "body_too_large"
    async with desk(server, venue_id) as client:
        page = await upload(client, big)
        assert page.status_code == 413
        assert 'id="import-error"' in page.text
    many = term_rows(1001)
    answer = await api_import(http, venue_id, csv_of(many), staff(venue_id), dry_run=True)
    assert answer.status_code == 422, answer.text
    assert (answer.json()["code"], answer.json()["reason"]) == ("invalid_file", "too_many_rows")
    answer = await api_import(http, venue_id, csv_of(many[:1000]), staff(venue_id),
                              dry_run=True)
    assert answer.status_code == 200, answer.text
    assert answer.json()["create"] == 1000
    assert await courses_of(db, venue_id) == []


async def test_a_file_with_unknown_or_missing_columns_is_refused_as_a_whole(server, http):
    venue_id = await make_venue(http)
    rows = [row[:-1] for row in term_rows(1)]
    answer = await api_import(http, venue_id, csv_of(rows, HEADER_ZH[:-1]), staff(venue_id))
    assert answer.status_code == 422
    assert (answer.json()["reason"], answer.json()["columns"]) == ("missing_columns",
                                                                   ["sales_open_at"])
    async with desk(server, venue_id) as client:
        page = await upload(client, csv_of(rows, [*HEADER_ZH[:-1], "座位"]))
    assert page.status_code == 422
    assert "座位" in page.text and 'id="import-error"' in page.text


async def test_the_template_to_download_imports_as_it_is(server, http):
    venue_id = await make_venue(http)
    template = await http.get("/static/term-template.csv")
    assert template.status_code == 200
    assert template.content.startswith(b"\xef\xbb\xbf")
    assert "编号,课程名称" in template.content.decode("utf-8-sig")
    answer = await api_import(http, venue_id, template.content, staff(venue_id), dry_run=True)
    assert answer.status_code == 200, answer.text
    assert answer.json()["create"] == 1
