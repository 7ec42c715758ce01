"""Constraints shared by request fields."""

# Postgres text cannot hold NUL; refusing it at the door turns a database error into a 400.
NO_NUL = r"^[^\x00]*$"
MAX_ID = 2**63 - 1  # Postgres bigint
