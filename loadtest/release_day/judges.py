"""Answer judges: each says what an answer means and why it is a failure, if it is one.

`sold_out`, `not_open` and the other documented 409s are correct answers; a 5xx, no answer or a
malformed body is a failure, and so is a payment answered `bad_signature` or `amount_mismatch`
(the scenario signs with the service's secret and pays the published price).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from locust.contrib.fasthttp import FastResponse

from booking.ledger.states import is_active

DOMAIN_409 = {"sold_out", "not_open", "course_cancelled"}
WAITLIST_409 = {"seats_available", "already_booked", "course_cancelled"}
SWAP_409 = {"sold_out", "not_open", "already_booked", "same_course", "not_active",
            "course_cancelled", "cancel_deadline_passed"}
PAYMENT_OUTCOMES = {"confirmed", "refund_due"}

T = TypeVar("T")
Judged = tuple[T, str | None]  # what an answer means, and why it is a failure (None: success)


@dataclass(frozen=True, slots=True)
class Seat:
    booking_id: str
    course_id: int
    held: bool  # a hold of a paid course, waiting for its payment


@dataclass(frozen=True, slots=True)
class GrabAnswer:
    outcome: str  # booked, sold_out, not_open, course_cancelled, refused, unavailable, error
    seat: Seat | None = None
    retry_after_s: float = 1.0


@dataclass(frozen=True, slots=True)
class PaymentAnswer:
    outcome: str  # confirmed, refund_due, or error
    booking_status: str = ""


def body_of(response: FastResponse) -> Any:
    try:
        return response.json()
    except (ValueError, TypeError, AttributeError):
        return None


def code_of(body: Any) -> str | None:
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


def retry_after(response: FastResponse) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After") or 1))
    except ValueError:
        return 1.0


def no_answer(response: FastResponse) -> str | None:
    if response.status_code == 0:
        return f"no answer: {response.error}"
    if response.status_code >= 500:
        return f"{response.status_code} {str(body_of(response))[:200]}"
    return None


def seat_in(body: Any, course_id: int, paid: bool, *, new: bool) -> Seat | None:
    """The booking in an answer, if the course can give it: a new booking of a paid course is a
    hold with `expires_at`, of a free course confirmed; one held already (200) may be paid."""
    if not (isinstance(body, dict) and isinstance(body.get("id"), str)
            and body.get("course_id") == course_id):
        return None
    status = body.get("status")
    if paid and status == "held" and isinstance(body.get("expires_at"), str):
        return Seat(body["id"], course_id, held=True)
    if status == "confirmed" and (not paid or not new):
        return Seat(body["id"], course_id, held=False)
    return None


def judge_grab(response: FastResponse, course_id: int, paid: bool) -> Judged[GrabAnswer]:
    status, body = response.status_code, body_of(response)
    if failure := no_answer(response):
        if status == 503:
            return GrabAnswer("unavailable", retry_after_s=retry_after(response)), failure
        return GrabAnswer("error"), failure
    if status in (200, 201):
        if seat := seat_in(body, course_id, paid, new=status == 201):
            return GrabAnswer("booked", seat), None
        wanted = "held" if paid else "confirmed"
        return GrabAnswer("error"), f"{status} without a {wanted} booking: {str(body)[:200]}"
    code = code_of(body)
    if status == 409 and code is not None:
        outcome = code if code in DOMAIN_409 else "refused"
        return GrabAnswer(outcome, retry_after_s=retry_after(response)), None
    return GrabAnswer("error"), f"{status} {str(body)[:200]}"


def seat_after(seat: Seat, booking_status: str) -> Seat | None:
    """The seat as a payment answer describes its booking; None once it holds no seat."""
    if not is_active(booking_status):
        return None
    return Seat(seat.booking_id, seat.course_id, held=booking_status == "held")


def judge_cancel(response: FastResponse, seat: Seat) -> Judged[bool]:
    """A cancelled booking; a hold may have lapsed first (then it answers `expired`)."""
    body = body_of(response)
    if failure := no_answer(response):
        return False, failure
    ended = {"cancelled", "expired"} if seat.held else {"cancelled"}
    if (response.status_code == 200 and isinstance(body, dict)
            and body.get("id") == seat.booking_id and body.get("status") in ended):
        return True, None
    return False, f"cancel answered {response.status_code} {str(body)[:200]}"


def judge_course_list(response: FastResponse) -> Judged[dict[int, int]]:
    """Seats left by course id, from one page of GET /v1/courses."""
    body = body_of(response)
    if failure := no_answer(response):
        return {}, failure
    items = body.get("items") if isinstance(body, dict) else None
    if (response.status_code != 200 or not isinstance(items, list) or "next_offset" not in body
            or not all(isinstance(c, dict) and "id" in c and "seats_left" in c for c in items)):
        return {}, f"course list answered {response.status_code} {str(body)[:200]}"
    return {c["id"]: c["seats_left"] for c in items}, None


def judge_my_bookings(response: FastResponse, held: str | None) -> Judged[list[dict[str, Any]]]:
    body = body_of(response)
    if failure := no_answer(response):
        return [], failure
    if response.status_code != 200 or not isinstance(body, list):
        return [], f"my bookings answered {response.status_code} {str(body)[:200]}"
    bookings = [b for b in body if isinstance(b, dict)]
    if held is not None and held not in {b.get("id") for b in bookings}:
        return bookings, f"booking {held} missing from /v1/me/bookings"
    return bookings, None


def judge_payment(response: FastResponse, booking_id: str,
                  first: str | None = None) -> Judged[PaymentAnswer]:
    """`confirmed` or `refund_due` (the hold lapsed, or a twin user of the same resident ended
    or paid it); a repeat of a callback must get the first answer again. 401 and 409
    `amount_mismatch` are failures here: the callback is signed with the service's secret and
    pays the published price."""
    body = body_of(response)
    if failure := no_answer(response):
        return PaymentAnswer("error"), failure
    outcome = body.get("outcome") if isinstance(body, dict) else None
    if (response.status_code != 200 or outcome not in PAYMENT_OUTCOMES
            or body.get("booking_id") != booking_id):
        return PaymentAnswer("error"), f"payment answered {response.status_code} {str(body)[:200]}"
    if first is not None and outcome != first:
        return PaymentAnswer("error"), f"a repeated callback answered {outcome}, first {first}"
    return PaymentAnswer(outcome, str(body.get("booking_status"))), None


def place_in(body: Any, course_id: int) -> bool:
    position = body.get("position") if isinstance(body, dict) else None
    return (isinstance(position, int) and position >= 1 and body.get("course_id") == course_id
            and body.get("status") == "waiting")


def judge_join(response: FastResponse, course_id: int) -> Judged[str]:
    """`waiting` (201, or 200 for a twin), or a documented 409 code."""
    status, body = response.status_code, body_of(response)
    if failure := no_answer(response):
        return "error", failure
    if status in (200, 201) and place_in(body, course_id):
        return "waiting", None
    if status == 409 and code_of(body) in WAITLIST_409:
        return str(code_of(body)), None
    return "error", f"waitlist join answered {status} {str(body)[:200]}"


def judge_place(response: FastResponse, course_id: int) -> Judged[str]:
    """`waiting`, or `gone` (404): promoted, or the place was cleared."""
    status, body = response.status_code, body_of(response)
    if failure := no_answer(response):
        return "error", failure
    if status == 200 and place_in(body, course_id):
        return "waiting", None
    if status == 404 and code_of(body) == "not_found":
        return "gone", None
    return "error", f"waitlist place answered {status} {str(body)[:200]}"


def judge_leave(response: FastResponse, course_id: int) -> Judged[str]:
    """`left`, or `gone` (404): promoted or cleared a moment before."""
    status, body = response.status_code, body_of(response)
    if failure := no_answer(response):
        return "error", failure
    if (status == 200 and isinstance(body, dict) and body.get("course_id") == course_id
            and body.get("status") == "left" and body.get("position") is None):
        return "left", None
    if status == 404 and code_of(body) == "not_found":
        return "gone", None
    return "error", f"waitlist leave answered {status} {str(body)[:200]}"


def judge_swap(response: FastResponse, old: Seat, target: int,
               paid: bool) -> Judged[Seat | None]:
    """The new booking (201), or None: a documented 409, and the old booking is kept."""
    status, body = response.status_code, body_of(response)
    if failure := no_answer(response):
        return None, failure
    if status == 201:
        seat = seat_in(body, target, paid, new=True)
        if seat is not None and seat.booking_id != old.booking_id:
            return seat, None
    elif status == 409 and code_of(body) in SWAP_409:
        return None, None
    return None, f"swap answered {status} {str(body)[:200]}"
