"""The Redis seat gate."""

from booking.seats.gate import (
    CourseGateState,
    Decision,
    Promotion,
    SeatGate,
    SyncResult,
    course_keys,
)

__all__ = ["CourseGateState", "Decision", "Promotion", "SeatGate", "SyncResult", "course_keys"]
