"""Hostile input: schemathesis generates requests from the service's own OpenAPI schema.

Fixed seed and a bounded number of examples, once with an operator's token and once with a
resident's. Every check runs but two: allow_header_conformance (Litestar answers OPTIONS per
route handler, so the Allow header of a path with GET and POST handlers names only one) and
positive_data_acceptance (rules across fields, such as ends_at after starts_at or an operator
naming the venue, cannot be said in JSON Schema, so some schema-valid bodies get a 400).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import OPERATOR, resident


@pytest.mark.parametrize("headers", [OPERATOR, resident("fuzzer")], ids=["operator", "resident"])
def test_generated_requests_get_no_5xx_and_match_the_schema(server, headers, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{server}/schema/openapi.json",
         "--checks", "all", "--exclude-checks", "allow_header_conformance,positive_data_acceptance",
         "--max-examples", "20", "--seed", "20261123",
         "-H", f"Authorization: {headers['Authorization']}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)  # its cache goes there
    assert run.returncode == 0, run.stdout[-6000:]
