"""The Redis seat gate."""

from booking.seats.gate import CourseGateState, Decision, SeatGate, SyncResult, course_keys

__all__ = ["CourseGateState", "Decision", "SeatGate", "SyncResult", "course_keys"]
