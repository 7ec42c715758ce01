"""My learning record: the lessons I was checked in at, their hours and the total, for the
city's credit bank; also as a spreadsheet (`/me/record.csv`) and as the signed JSON of
`GET /v1/me/record` (`/me/record.json`).

The CSV opens in Excel: UTF-8 with a BOM, and formula-safe, since course titles and venue names
are text a venue typed: a cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return gets
a leading `'`, so a spreadsheet shows it as text instead of running it.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.response import Redirect, Template

from booking.record import Record, Records
from booking.web.render import page, sign_in_first, visitor
from booking.web.spreadsheet import csv_bytes

MY_RECORD = "/me/record"


@get(MY_RECORD, name="my_record")
async def my_record(request: Request, records: NamedDependency[Records]
                    ) -> Template | Redirect:
    """The entries and the total hours, with links to the CSV and the signed JSON."""
    resident_id = visitor(request).resident_id
    if resident_id is None:
        return sign_in_first(request, MY_RECORD)
    return page(request, "my_record.html", record=await records.of_resident(resident_id))


@get(f"{MY_RECORD}.json", name="my_record_json")
async def my_record_json(request: Request, records: NamedDependency[Records]
                         ) -> Response[Any] | Redirect:
    """The same as `GET /v1/me/record`: `{"record": {...}, "jws": "..."}`."""
    resident_id = visitor(request).resident_id
    if resident_id is None:
        return sign_in_first(request, f"{MY_RECORD}.json")
    return Response(msgspec.json.encode(await records.signed(resident_id)),
                    media_type="application/json",
                    headers={"Cache-Control": "no-store",
                             "Content-Disposition": 'inline; filename="learning-record.json"'})


@get(f"{MY_RECORD}.csv", name="my_record_csv")
async def my_record_csv(request: Request, records: NamedDependency[Records]
                        ) -> Response[bytes] | Redirect:
    """The record as a spreadsheet: a header row, one row per lesson, then the total."""
    resident_id = visitor(request).resident_id
    if resident_id is None:
        return sign_in_first(request, f"{MY_RECORD}.csv")
    _ = visitor(request).words.gettext
    headings = [_("日期"), _("课程编号"), _("课程"), _("教学点编号"), _("教学点"), _("学时")]
    body = record_csv(await records.of_resident(resident_id), headings, _("合计"))
    return Response(body, media_type="text/csv; charset=utf-8",
                    headers={"Cache-Control": "no-store",
                             "Content-Disposition": 'attachment; filename="learning-record.csv"'})


def record_csv(record: Record, headings: list[str], total_label: str) -> bytes:
    """The record as a spreadsheet: a line per lesson, then the total."""
    rows: list[list[object]] = [
        [entry.date, entry.course_id, entry.course_title, entry.venue_id, entry.venue_name,
         entry.hours] for entry in record.entries]
    return csv_bytes([headings, *rows, [total_label, "", "", "", "", record.total_hours]])


HANDLERS: list[Any] = [my_record, my_record_json, my_record_csv]
