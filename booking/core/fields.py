"""Constraints shared by request fields."""

# Postgres text cannot hold NUL; refusing it at the door turns a database error into a 400.
NO_NUL = r"^[^\x00]*$"
MAX_ID = 2**63 - 1  # Postgres bigint


def storable_id(n: int) -> bool:
    """An id Postgres could hold (a positive bigint); any other is simply not found."""
    return 1 <= n <= MAX_ID
