"""Import a term (`/venue/import`): staff upload a CSV or XLSX, see every refused row or a
preview, and only `form#import-confirm` applies it.

The same `Imports` service answers `POST /v1/venues/{venue_id}/imports` (`dry_run=true` for
the preview). The confirm form carries the file itself back (base64 in a hidden field, at most
2 MB of file), so nothing is kept on the server between the preview and the confirmation.
Both forms are multipart, so the base64 is sent as it is, not URL-encoded again.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import urlencode

from litestar import Request, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.response import Redirect, Template

from booking.core.errors import ApiError
from booking.imports import MAX_FILE_BYTES, MAX_ROWS, ImportOut, Imports, RowError
from booking.web.render import page, see_other, staff_sign_in_first, visitor

IMPORT = "/venue/import"
TEMPLATE_CSV = "/static/term-template.csv"
# The confirm form's base64 is 4/3 of the file; the rest is room for the form's other parts.
PAGE_BODY_BYTES = 3 * MAX_FILE_BYTES


@get(IMPORT, name="venue_import")
async def import_page(request: Request) -> Template | Redirect:
    """The upload form (and what the last import did, after a confirmation)."""
    if visitor(request).venue_id is None:
        return staff_sign_in_first(request)
    done = None
    created, updated = request.query_params.get("created"), request.query_params.get("updated")
    if created and updated and created.isdigit() and updated.isdigit():
        done = {"created": int(created), "updated": int(updated)}
    return _page(request, done=done)


@post(IMPORT, name="venue_import_upload", status_code=200,
      request_max_body_size=PAGE_BODY_BYTES)
async def upload(request: Request, imports: NamedDependency[Imports]) -> Template | Redirect:
    """Check the file chosen: its refused rows, or a preview and the confirm form."""
    seen = visitor(request)
    if seen.venue_id is None or seen.user is None:
        return staff_sign_in_first(request, IMPORT)
    chosen = (await request.form()).get("file")
    content = await chosen.read() if isinstance(chosen, UploadFile) else b""
    if not content:
        return _page(request, error=seen.words.gettext("请先选择要导入的文件。"),
                     status_code=400)
    try:
        preview = await imports.preview(seen.venue_id, content, seen.user)
    except ApiError as exc:
        return _refused(request, exc)
    return _page(request, preview=preview, content=base64.b64encode(content).decode())


@post(f"{IMPORT}/confirm", name="venue_import_confirm", status_code=303,
      request_max_body_size=PAGE_BODY_BYTES)
async def confirm(request: Request, imports: NamedDependency[Imports]) -> Template | Redirect:
    """Apply the file the preview showed (all rows or none), then back to the form."""
    seen = visitor(request)
    if seen.venue_id is None or seen.user is None:
        return staff_sign_in_first(request, IMPORT)
    carried = (await request.form()).get("content")
    try:
        content = base64.b64decode(carried if isinstance(carried, str) else "", validate=True)
    except (binascii.Error, ValueError):
        content = b""
    if not content:
        return _page(request, error=seen.words.gettext("没有收到要导入的文件，请重新选择文件。"),
                     status_code=400)
    try:
        done = await imports.apply(seen.venue_id, content, seen.user)
    except ApiError as exc:
        return _refused(request, exc)
    return see_other(f"{IMPORT}?" + urlencode({"created": done.create, "updated": done.update}),
                     request)


def _page(request: Request, *, status_code: int = 200, error: str | None = None,
          refused: list[tuple[int, list[RowError]]] | None = None,
          preview: ImportOut | None = None, content: str = "",
          done: dict[str, int] | None = None) -> Template:
    return page(request, "venue_import.html", status_code=status_code, error=error,
                refused=refused or [], preview=preview, content=content, done=done,
                labels=column_labels(request), sentence=lambda item: row_sentence(request, item),
                template_csv=TEMPLATE_CSV, max_rows=MAX_ROWS,
                max_mb=MAX_FILE_BYTES // (1024 * 1024))


def _refused(request: Request, exc: ApiError) -> Template:
    """The page for a file the service refused: each refused row, or why the whole file."""
    if exc.code == "invalid_rows":
        by_row: dict[int, list[RowError]] = {}
        for item in exc.extra.get("rows", []):
            error = RowError(**item)
            by_row.setdefault(error.row, []).append(error)
        return _page(request, refused=sorted(by_row.items()), status_code=422)
    if exc.code in ("invalid_file", "body_too_large"):
        return _page(request, error=file_sentence(request, exc), status_code=exc.status_code)
    raise exc


def column_labels(request: Request) -> dict[str, str]:
    """Each field's column, as the template's header names it, in the visitor's language."""
    _ = visitor(request).words.gettext
    return {"code": _("编号"), "title": _("课程名称"), "category": _("类别"),
            "teacher": _("老师"), "description": _("简介"), "starts_at": _("开课时间"),
            "ends_at": _("结束时间"), "lessons": _("次数"), "capacity": _("名额"),
            "fee_yuan": _("费用(元)"), "sales_open_at": _("开抢时间")}


def file_sentence(request: Request, exc: ApiError) -> str:
    """Why a whole file was refused, in words."""
    _ = visitor(request).words.gettext
    labels = column_labels(request)
    columns = _("、").join(labels.get(name, name) for name in exc.extra.get("columns", []))
    sentences = {
        "body_too_large": _("文件超过 %(mb)s MB，请分成几个文件导入。") % {
            "mb": MAX_FILE_BYTES // (1024 * 1024)},
        "empty": _("这个文件是空的。"),
        "no_rows": _("文件只有表头，没有课程。"),
        "unreadable": _("读不出这个文件。请按模板填写，存为 CSV 或 Excel（.xlsx）文件。"),
        "too_many_rows": _("一个文件最多 %(n)s 门课程，请分成几个文件导入。") % {"n": MAX_ROWS},
        "unknown_columns": _("表头里有不认识的列：%(columns)s。请按模板填写表头。") % {
            "columns": columns},
        "duplicate_columns": _("这些列出现了两次：%(columns)s。") % {"columns": columns},
        "missing_columns": _("缺少这些列：%(columns)s。请按模板填写表头。") % {
            "columns": columns},
    }
    reason = "body_too_large" if exc.code == "body_too_large" else exc.extra.get("reason", "")
    return sentences.get(reason, sentences["unreadable"])


def row_sentence(request: Request, error: RowError) -> str:
    """What is wrong with one cell, in words."""
    _ = visitor(request).words.gettext
    values: dict[str, Any] = dict(error.values)
    sentences = {
        "required": _("这一格不能空着。"),
        "too_long": _("最多 %(max)s 个字。"),
        "not_whole": _("请填整数。"),
        "out_of_range": _("请填 %(min)s 到 %(max)s 之间的数。"),
        "bad_fee": _("费用请填多少元，例如 120 或 120.5。"),
        "bad_time": _("时间请写成 2027-03-01 19:00 这样（北京时间）。"),
        "ends_before_start": _("结束时间要晚于开课时间。"),
        "opens_after_start": _("开抢时间不能晚于开课时间。"),
        "duplicate_code": _("编号和第 %(other)s 行重复，每门课的编号要不同。"),
        "course_cancelled": _("这个编号的课程已经取消，请换一个编号。"),
        "below_bookings": _("已经有 %(booked)s 人预约，名额不能少于这个数。"),
        "draw_pending": _("第 %(release_id)s 号放号还没有抽签，抽签以后才能改名额。"),
    }
    sentence = sentences.get(error.code, _("这一格的内容不符合要求。"))
    try:
        return sentence % values if values else sentence
    except (KeyError, TypeError, ValueError):
        return sentence


HANDLERS: list[Any] = [import_page, upload, confirm]
