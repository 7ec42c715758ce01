"""A venue's term imported from a spreadsheet (CSV or XLSX): read, checked row by row by the
rules of `POST /v1/courses`, shown as a preview, then applied all at once.

The file: CSV in UTF-8 (with or without BOM) or GB18030 (what Excel on Chinese Windows saves),
or XLSX (its first sheet, read by openpyxl in read-only mode; openpyxl parses the XML with
defusedxml). At most 2 MB and 1,000 data rows. The header row names the columns in Chinese or
English (`COLUMNS`); times are `YYYY-MM-DD HH:MM` in Beijing time or ISO 8601 with an offset.

A refused row is reported as `{row, column, code, message}`, `row` numbered as the spreadsheet
shows it (the header is row 1), and nothing is written. A clean file is applied in one Postgres
transaction, idempotent on (venue, code): a course with the same code is updated (capacity never
below its active bookings), never duplicated. After the commit each course's seat gate is
reloaded from Postgres, as `Courses.update` does.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, get_args

import asyncpg
import msgspec
from litestar import Request, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromQuery, Parameter

from booking.core.auth import Principal, requires
from booking.core.errors import ApiError, ErrorBody, Forbidden, NotFound
from booking.core.fields import MAX_ID, storable_id
from booking.core.readcache import ReadCache
from booking.courses import (
    MAX_CAPACITY,
    MAX_PRICE_CENTS,
    Category,
    CourseIn,
    Description,
    ShortText,
    constraint_error,
)
from booking.ledger.promotions import promote_waiting
from booking.seats.seating import Seats

MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_ROWS = 1000
MAX_SHEET_ROWS = 100_000  # rows read (blank ones too) before a sheet counts as too long
MAX_UNZIPPED_BYTES = 64 * 1024 * 1024  # an XLSX inflating past this is refused (zip bomb)
MAX_CODE = 40  # courses_code_shape
MAX_LESSONS = 52  # courses_lessons_range
CSV_TYPE = "text/csv"
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
ACCEPTED_TYPES = (CSV_TYPE, XLSX_TYPE, "application/octet-stream", "application/vnd.ms-excel",
                  "text/plain")
BEIJING = timezone(timedelta(hours=8))

# The header a column may have (Chinese, English), and the field it fills.
COLUMNS: dict[str, tuple[str, ...]] = {
    "code": ("编号", "code"),
    "title": ("课程名称", "title"),
    "category": ("类别", "category"),
    "teacher": ("老师", "teacher"),
    "description": ("简介", "description"),
    "starts_at": ("开课时间", "starts_at"),
    "ends_at": ("结束时间", "ends_at"),
    "lessons": ("次数", "lessons"),
    "capacity": ("名额", "capacity"),
    "fee_yuan": ("费用(元)", "费用", "fee_yuan"),
    "sales_open_at": ("开抢时间", "sales_open_at"),
}
REQUIRED = ("code", "title", "category", "teacher", "starts_at", "ends_at", "capacity",
            "sales_open_at")
TEXTS: dict[str, Any] = {"title": ShortText, "category": Category, "teacher": ShortText,
                         "description": Description}
LOCAL_TIME = re.compile(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})[ T](\d{1,2}):(\d{2})(?::(\d{2}))?$")


class RowError(msgspec.Struct):
    """Why a row was refused: `row` as the spreadsheet numbers it (header = 1), `column` the
    field, `code` what is wrong (`values` fill in its sentence), `message` in English."""

    row: int
    column: str
    code: str
    message: str
    values: dict[str, int] = {}


class RowPreview(msgspec.Struct):
    """One row of the file as it will be (or was) applied."""

    row: int
    action: str  # "create" or "update"
    code: str
    title: str
    category: str
    teacher: str
    starts_at: datetime
    ends_at: datetime
    lessons: int
    capacity: int
    price_cents: int
    sales_open_at: datetime
    course_id: int | None  # the course updated (or created, once applied)


class ImportOut(msgspec.Struct):
    create: int
    update: int
    rows: list[RowPreview]
    applied: bool


class ImportRefusal(msgspec.Struct):
    """A 422: `rows` for invalid_rows, `reason` (and `columns` or `max`) for invalid_file."""

    code: str
    detail: str
    rows: list[RowError] | None = None
    reason: str | None = None
    columns: list[str] | None = None
    max: int | None = None


class InvalidRows(ApiError):
    status_code, code = 422, "invalid_rows"
    detail = "Some rows are refused; nothing was written."


class InvalidFile(ApiError):
    """The file as a whole cannot be read; `reason` (in `extra`) says why."""

    status_code, code = 422, "invalid_file"


class TooLarge(ApiError):
    status_code, code = 413, "body_too_large"
    detail = f"The file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB."


class UnsupportedType(ApiError):
    status_code, code = 415, "unsupported_media_type"
    detail = f"Send the file as {CSV_TYPE} or {XLSX_TYPE}."


def file_error(reason: str, detail: str, **values: Any) -> InvalidFile:
    return InvalidFile(detail, extra={"reason": reason, **values})


def rows_refused(errors: list[RowError]) -> InvalidRows:
    return InvalidRows(extra={"rows": msgspec.to_builtins(errors)})


# --- reading the file -------------------------------------------------------------------------

def read_table(content: bytes) -> list[tuple[int, list[Any]]]:
    """The file's non-blank rows, each with its row number as a spreadsheet shows it."""
    if len(content) > MAX_FILE_BYTES:
        raise TooLarge()
    if not content.strip():
        raise file_error("empty", "The file is empty.")
    if content.startswith(b"PK\x03\x04"):
        return _xlsx_rows(content)
    return _csv_rows(content)


def _csv_rows(content: bytes) -> list[tuple[int, list[Any]]]:
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = content.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise file_error("unreadable", "The file is neither UTF-8 nor GB18030 text.")
    first_line = text.split("\n", 1)[0]
    dialect: Any = csv.excel_tab if "\t" in first_line and "," not in first_line else csv.excel
    found = []
    try:
        for number, record in enumerate(csv.reader(io.StringIO(text, newline=""), dialect), 1):
            if any(cell.strip() for cell in record):
                found.append((number, list(record)))
                if len(found) > MAX_ROWS + 1:
                    raise _too_many_rows()
    except csv.Error as exc:
        raise file_error("unreadable", f"The CSV cannot be read: {exc}.") from exc
    return found


def _xlsx_rows(content: bytes) -> list[tuple[int, list[Any]]]:
    import openpyxl  # imported on use: only an import needs it

    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            if sum(item.file_size for item in archive.infolist()) > MAX_UNZIPPED_BYTES:
                raise file_error("unreadable", "The XLSX file unpacks to too much data.")
        book = openpyxl.load_workbook(io.BytesIO(content), read_only=True, data_only=True)
    except InvalidFile:
        raise
    except Exception as exc:  # openpyxl raises many kinds for a damaged file
        raise file_error("unreadable", "The XLSX file cannot be read.") from exc
    try:
        sheet = book.worksheets[0]
        sheet.reset_dimensions()  # some writers record wrong dimensions; read what is there
        found = []
        for number, record in enumerate(sheet.iter_rows(values_only=True, max_col=64), 1):
            if number > MAX_SHEET_ROWS:
                raise _too_many_rows()
            if any(_cell_text(cell) for cell in record):
                found.append((number, list(record)))
                if len(found) > MAX_ROWS + 1:
                    raise _too_many_rows()
        return found
    except InvalidFile:
        raise
    except Exception as exc:
        raise file_error("unreadable", "The XLSX file cannot be read.") from exc
    finally:
        book.close()


def _too_many_rows() -> InvalidFile:
    return file_error("too_many_rows", f"A file holds at most {MAX_ROWS} rows of courses.",
                      max=MAX_ROWS)


def _cell_text(cell: Any) -> str:
    """A cell as text: numbers without a needless `.0`, times as `YYYY-MM-DD HH:MM:SS`."""
    if cell is None:
        return ""
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    return str(cell).strip()


def header_fields(header: list[Any]) -> list[str | None]:
    """The field each column fills (None for a blank header cell); an unknown, duplicated or
    missing column is an InvalidFile."""
    known = {_plain(name): field for field, names in COLUMNS.items() for name in names}
    fields: list[str | None] = []
    unknown = []
    for cell in header:
        name = _plain(_cell_text(cell))
        if not name:
            fields.append(None)
        elif name in known:
            fields.append(known[name])
        else:
            fields.append(None)
            unknown.append(_cell_text(cell))
    if unknown:
        raise file_error("unknown_columns", f"Unknown columns: {', '.join(unknown)}.",
                         columns=unknown)
    named = [field for field in fields if field]
    twice = sorted({field for field in named if named.count(field) > 1})
    if twice:
        raise file_error("duplicate_columns", f"Columns given twice: {', '.join(twice)}.",
                         columns=twice)
    missing = [field for field in REQUIRED if field not in named]
    if missing:
        raise file_error("missing_columns", f"Missing columns: {', '.join(missing)}.",
                         columns=missing)
    return fields


def _plain(name: str) -> str:
    return name.replace("（", "(").replace("）", ")").replace(" ", "").lower()


# --- checking each row ------------------------------------------------------------------------

@dataclass(slots=True)
class Checked:
    """A row that passed every check: its course and its code."""

    row: int
    code: str
    lessons: int
    course: CourseIn


class _Row:
    """One data row being checked: its cells by field and the errors found so far."""

    def __init__(self, number: int, cells: dict[str, Any]) -> None:
        self.number = number
        self.cells = cells
        self.errors: list[RowError] = []

    def refuse(self, column: str, code: str, message: str, **values: int) -> None:
        self.errors.append(RowError(self.number, column, code, message, values))

    def text(self, field: str) -> str:
        return _cell_text(self.cells.get(field))

    def required(self, field: str) -> str | None:
        value = self.text(field)
        if not value:
            self.refuse(field, "required", "This cell must not be empty.")
            return None
        if "\x00" in value:
            self.refuse(field, "invalid", "The text holds a NUL character.")
            return None
        return value

    def words(self, field: str) -> str | None:
        """A text field within the limits of POST /v1/courses."""
        meta = get_args(TEXTS[field])[1]
        value = self.text(field) if field == "description" else self.required(field)
        if value is None:
            return None
        if len(value) > meta.max_length:
            self.refuse(field, "too_long", f"At most {meta.max_length} characters.",
                        max=meta.max_length)
            return None
        if "\x00" in value:
            self.refuse(field, "invalid", "The text holds a NUL character.")
            return None
        return value

    def whole(self, field: str, low: int, high: int, default: int | None = None) -> int | None:
        cell = self.cells.get(field)
        if default is not None and not _cell_text(cell):
            return default
        value = self.required(field)
        if value is None:
            return None
        try:
            number = Decimal(value)
            if number != number.to_integral_value():
                raise InvalidOperation
        except ArithmeticError:
            self.refuse(field, "not_whole", "Write a whole number.")
            return None
        if not low <= number <= high:
            self.refuse(field, "out_of_range", f"Must be from {low} to {high}.",
                        min=low, max=high)
            return None
        return int(number)

    def fee(self) -> int | None:
        """The fee in yuan (e.g. 120.5) as cents; an empty cell is free."""
        value = self.text("fee_yuan").replace(",", "").lstrip("¥￥")
        if not value:
            return 0
        try:
            yuan = Decimal(value)
            cents = yuan * 100
            if not yuan.is_finite() or cents != cents.to_integral_value():
                raise InvalidOperation
        except ArithmeticError:
            self.refuse("fee_yuan", "bad_fee", "Write the fee in yuan, e.g. 120 or 120.5.")
            return None
        if not 0 <= cents <= MAX_PRICE_CENTS:
            self.refuse("fee_yuan", "out_of_range",
                        f"Must be from 0 to {MAX_PRICE_CENTS // 100} yuan.",
                        min=0, max=MAX_PRICE_CENTS // 100)
            return None
        return int(cents)

    def moment(self, field: str) -> datetime | None:
        cell = self.cells.get(field)
        if isinstance(cell, datetime):  # an XLSX date cell: a wall-clock time in Beijing
            return cell.replace(tzinfo=BEIJING) if cell.tzinfo is None else cell
        value = self.required(field)
        if value is None:
            return None
        found = parse_time(value)
        if found is None:
            self.refuse(field, "bad_time", "Write the time as YYYY-MM-DD HH:MM (Beijing time) "
                        "or ISO 8601 with an offset.")
        return found


def parse_time(value: str) -> datetime | None:
    """`YYYY-MM-DD HH:MM[:SS]` (also with `/`, as Excel writes it) in Beijing time, or ISO 8601
    with an offset; None for anything else."""
    local = LOCAL_TIME.match(value)
    try:
        if local:
            year, month, day, hour, minute, second = (int(part or 0) for part in local.groups())
            return datetime(year, month, day, hour, minute, second, tzinfo=BEIJING)
        found = datetime.fromisoformat(value)
    except ValueError:
        return None
    return found if found.tzinfo is not None else None


def check_row(number: int, fields: list[str | None], record: list[Any],
              venue_id: int) -> Checked | list[RowError]:
    """A row as a course, or why not (every problem of the row, not just the first)."""
    row = _Row(number, {field: cell for field, cell in zip(fields, record, strict=False)
                        if field})
    code = row.required("code")
    if code is not None and len(code) > MAX_CODE:
        row.refuse("code", "too_long", f"At most {MAX_CODE} characters.", max=MAX_CODE)
    texts = {field: row.words(field) for field in TEXTS}
    starts_at, ends_at = row.moment("starts_at"), row.moment("ends_at")
    sales_open_at = row.moment("sales_open_at")
    lessons = row.whole("lessons", 1, MAX_LESSONS, default=1)
    capacity = row.whole("capacity", 1, MAX_CAPACITY)
    price_cents = row.fee()
    if starts_at and ends_at and ends_at <= starts_at:
        row.refuse("ends_at", "ends_before_start", "The end must be after the start.")
    if starts_at and sales_open_at and sales_open_at > starts_at:
        row.refuse("sales_open_at", "opens_after_start",
                   "Sales must open no later than the start.")
    if row.errors:
        return row.errors
    try:  # the very rules of POST /v1/courses, once more as a whole
        course = msgspec.convert(
            {**texts, "starts_at": starts_at, "ends_at": ends_at, "capacity": capacity,
             "sales_open_at": sales_open_at, "price_cents": price_cents, "venue_id": venue_id},
            CourseIn)
    except msgspec.ValidationError as exc:
        column = str(exc).rpartition("$.")[2].strip("`") or "code"
        row.refuse(column if column in COLUMNS else "code", "invalid", str(exc))
        return row.errors
    return Checked(number, code or "", lessons or 1, course)


def check_file(content: bytes, venue_id: int) -> list[Checked]:
    """Every row of the file as a course; any refused row is an InvalidRows with them all."""
    table = read_table(content)
    if not table:
        raise file_error("empty", "The file is empty.")
    (_, header), data = table[0], table[1:]
    fields = header_fields(header)
    if not data:
        raise file_error("no_rows", "The file has a header but no courses.")
    if len(data) > MAX_ROWS:
        raise _too_many_rows()
    checked: list[Checked] = []
    errors: list[RowError] = []
    first_row_of: dict[str, int] = {}
    for number, record in data:
        outcome = check_row(number, fields, record, venue_id)
        if isinstance(outcome, list):
            errors.extend(outcome)
            continue
        if outcome.code in first_row_of:
            errors.append(RowError(number, "code", "duplicate_code",
                                   f"The same code is on row {first_row_of[outcome.code]}.",
                                   {"other": first_row_of[outcome.code]}))
            continue
        first_row_of[outcome.code] = number
        checked.append(outcome)
    if errors:
        raise rows_refused(errors)
    return checked


# --- against the database ---------------------------------------------------------------------

EXISTING = """
SELECT id, code, status, active_bookings, capacity, sales_open_at, release_id,
       release_id IS NOT NULL AND EXISTS (
           SELECT 1 FROM releases r WHERE r.id = release_id AND r.mode <> 'fcfs'
              AND NOT EXISTS (SELECT 1 FROM release_draws d
                              WHERE d.release_id = r.id AND d.drawn_at IS NOT NULL)
       ) AS draw_pending
FROM courses WHERE venue_id = $1 AND code = ANY($2::text[]) ORDER BY id
"""
# One statement for every row: new codes are inserted, known ones updated (the partial unique
# index courses_code_per_venue is the arbiter). `xmax = 0` is true for a row just inserted.
UPSERT = """
INSERT INTO courses (venue_id, code, title, category, teacher, description, starts_at, ends_at,
                     lessons, capacity, price_cents, sales_open_at)
SELECT $1::bigint, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::timestamptz[], $8::timestamptz[], $9::int[], $10::int[], $11::int[],
                         $12::timestamptz[])
ON CONFLICT (venue_id, code) WHERE code IS NOT NULL DO UPDATE SET
    title = EXCLUDED.title, category = EXCLUDED.category, teacher = EXCLUDED.teacher,
    description = EXCLUDED.description, starts_at = EXCLUDED.starts_at,
    ends_at = EXCLUDED.ends_at, lessons = EXCLUDED.lessons, capacity = EXCLUDED.capacity,
    price_cents = EXCLUDED.price_cents,
    -- a course of a release opens when its release says, whatever the file says
    sales_open_at = CASE WHEN courses.release_id IS NULL THEN EXCLUDED.sales_open_at
                         ELSE courses.sales_open_at END,
    updated_at = now()
RETURNING id, code, xmax = 0 AS created
"""


def _against(checked: list[Checked], existing: list[asyncpg.Record]) -> list[RowPreview]:
    """The preview of each row given the venue's courses with the same codes; a row that would
    take a course below its active bookings, or change a cancelled one, is refused."""
    known = {row["code"]: row for row in existing}
    errors: list[RowError] = []
    shown = []
    for item in checked:
        course = known.get(item.code)
        if course is not None and course["status"] == "cancelled":
            errors.append(RowError(item.row, "code", "course_cancelled",
                                   "That course was cancelled; give the row a new code."))
        elif course is not None and item.course.capacity < course["active_bookings"]:
            errors.append(RowError(
                item.row, "capacity", "below_bookings",
                f"{course['active_bookings']} seats are booked; capacity cannot be lower.",
                {"booked": course["active_bookings"]}))
        elif course is not None and course["release_id"] is not None:
            errors.extend(_release_refusals(item, course))
        shown.append(_preview(item, course["id"] if course else None,
                              opening=course["sales_open_at"] if course is not None
                              and course["release_id"] is not None else None))
    if errors:
        raise rows_refused(errors)
    return shown


def _release_refusals(item: Checked, course: asyncpg.Record) -> list[RowError]:
    """A draw counts the seats a course had at the close: as PATCH /v1/courses refuses, so does
    a re-upload. (The file's opening of a release's course is not refused but kept as the
    release set it: a venue re-uploading its term to fix a title is not blocked.)"""
    if course["draw_pending"] and item.course.capacity != course["capacity"]:
        return [RowError(item.row, "capacity", "draw_pending",
                         f"Release {course['release_id']} has not been drawn yet; the capacity "
                         "can change after the draw.", {"release_id": course["release_id"]})]
    return []


def _preview(item: Checked, course_id: int | None, created: bool | None = None,
             opening: datetime | None = None) -> RowPreview:
    course = item.course
    action = ("create" if course_id is None else "update") if created is None else \
        ("create" if created else "update")
    return RowPreview(row=item.row, action=action, code=item.code, title=course.title,
                      category=course.category, teacher=course.teacher,
                      starts_at=course.starts_at, ends_at=course.ends_at, lessons=item.lessons,
                      capacity=course.capacity, price_cents=course.price_cents,
                      sales_open_at=opening or course.sales_open_at, course_id=course_id)


def _summary(rows: list[RowPreview], applied: bool) -> ImportOut:
    created = sum(1 for row in rows if row.action == "create")
    return ImportOut(create=created, update=len(rows) - created, rows=rows, applied=applied)


def _columns(checked: list[Checked]) -> list[list[Any]]:
    """The rows as one array per column, in UPSERT's order."""
    return [[item.code for item in checked], *(
        [getattr(item.course, name) for item in checked]
        for name in ("title", "category", "teacher", "description", "starts_at", "ends_at")),
        [item.lessons for item in checked], *(
        [getattr(item.course, name) for item in checked]
        for name in ("capacity", "price_cents", "sales_open_at"))]


class Imports:
    """The term import's service: what `/v1/venues/{id}/imports` and `/venue/import` call."""

    def __init__(self, pool: asyncpg.Pool, seats: Seats, reads: ReadCache) -> None:
        self.pool = pool
        self.seats = seats
        self.reads = reads

    async def _checked(self, venue_id: int, content: bytes,
                       principal: Principal) -> list[Checked]:
        if principal.role == "venue" and principal.venue_id != venue_id:
            raise Forbidden("A venue can import courses only for itself.")
        if not storable_id(venue_id) or not await self.pool.fetchval(
                "SELECT 1 FROM venues WHERE id = $1", venue_id):
            raise NotFound.of("venue")
        if len(content) > MAX_FILE_BYTES:
            raise TooLarge()
        return await asyncio.to_thread(check_file, content, venue_id)

    async def preview(self, venue_id: int, content: bytes, principal: Principal) -> ImportOut:
        """What the file would create and update; writes nothing."""
        checked = await self._checked(venue_id, content, principal)
        existing = await self.pool.fetch(EXISTING, venue_id, [item.code for item in checked])
        return _summary(_against(checked, existing), applied=False)

    async def apply(self, venue_id: int, content: bytes, principal: Principal) -> ImportOut:
        """Every row in one transaction (the venue's courses with these codes locked first, in
        id order as everywhere else), then each course's gate reloaded from Postgres."""
        checked = await self._checked(venue_id, content, principal)
        codes = [item.code for item in checked]
        async with self.pool.acquire() as conn, conn.transaction():
            existing = await conn.fetch(EXISTING + " FOR UPDATE", venue_id, codes)
            _against(checked, existing)
            try:
                written = await conn.fetch(UPSERT, venue_id, *_columns(checked))
            except asyncpg.IntegrityConstraintViolationError as exc:
                raise constraint_error(exc) from exc
        self.reads.clear()
        by_code = {row["code"]: row for row in written}
        for row in written:
            await self._reload(row["id"], created=row["created"])
        return _summary([_preview(item, by_code[item.code]["id"], by_code[item.code]["created"])
                         for item in checked], applied=True)

    async def _reload(self, course_id: int, *, created: bool) -> None:
        """The gate set from Postgres; an updated course with seats to spare hands them to its
        waitlist first (as `Courses.update` does)."""
        loaded = await self.seats.loader.load(course_id)
        if not created and loaded is not None and loaded.seats_left > 0 and \
                await promote_waiting(self.pool, self.seats.gate, course_id):
            await self.seats.loader.load(course_id)


# --- /v1 --------------------------------------------------------------------------------------

ANSWERS = {
    413: ResponseSpec(ErrorBody, description="body_too_large: the file is over 2 MB"),
    415: ResponseSpec(ErrorBody,
                      description="unsupported_media_type: send text/csv or the XLSX type"),
    422: ResponseSpec(ImportRefusal, description=(
        "invalid_rows: `rows` lists every refused row `{row, column, code, message}` (row as "
        "the spreadsheet numbers it, header = 1); invalid_file: `reason` is empty, no_rows, "
        "unreadable, too_many_rows, unknown_columns, duplicate_columns or missing_columns. "
        "Nothing is written.")),
}
VenueId = Annotated[int, Parameter(ge=1, le=MAX_ID, description="Venue id")]


@post("/v1/venues/{venue_id:int}/imports", operation_id="importTerm", tags=["venues"],
      status_code=200, request_max_body_size=MAX_FILE_BYTES,
      **requires("venue", "operator", errors=(404,), also=ANSWERS))
async def import_term(request: Request[Principal, Any, State], venue_id: VenueId,
                      imports: NamedDependency[Imports],
                      dry_run: FromQuery[bool] = False) -> ImportOut:
    """Import a term: every row becomes a course of the venue, created, or updated when the
    venue already has a course with its `code`; all rows or none. `dry_run=true` answers the
    preview and writes nothing. Staff of the venue, or an operator.

    The file is the raw request body, `Content-Type: text/csv` (UTF-8, with or without BOM,
    or GB18030) or the XLSX type (its first sheet); at most 2 MB and 1,000 rows under a
    header row naming the columns in Chinese or English: 编号 code, 课程名称 title, 类别
    category, 老师 teacher, 简介 description, 开课时间 starts_at, 结束时间 ends_at, 次数
    lessons (default 1), 名额 capacity, 费用(元) fee_yuan (default 0), 开抢时间 sales_open_at.
    Times are `YYYY-MM-DD HH:MM` in Beijing time, or ISO 8601 with an offset."""
    if request.content_type[0] not in ACCEPTED_TYPES:
        raise UnsupportedType()
    data = await request.body()
    if dry_run:
        return await imports.preview(venue_id, data, request.user)
    return await imports.apply(venue_id, data, request.user)


HANDLERS: list[Any] = [import_term]
