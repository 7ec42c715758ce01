"""The Redis seat gate and everything that keeps it in agreement with Postgres."""

from booking.seats.gate import (
    CourseGateState,
    Decision,
    Outcome,
    Promotion,
    SeatGate,
    SyncResult,
    course_keys,
)

__all__ = ["CourseGateState", "Decision", "Outcome", "Promotion", "SeatGate", "SyncResult",
           "course_keys"]
