"""The figures `booking bench` reads from the text of others: wrk's latency distribution and
the service's /metrics page."""

from __future__ import annotations

from collections import Counter

import pytest

from booking.ops.bench import _wrk_p99_ms
from booking.ops.bench_metrics import answers, parse_view
from booking.ops.bench_waits import every_answer, read_waits, wait_figures

WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:18001
  2 threads and 256 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    37.81ms   90.71ms   1.06s    96.02%
  Latency Distribution
     50%   16.99ms
     75%   20.01ms
     90%   25.12ms
     99%   {p99}
  56870 requests in 5.00s, 8.46MB read
Requests/sec:  11382.44
"""


@pytest.mark.parametrize(("printed", "ms"), [
    ("574.39ms", 574.4), ("1.22s", 1220.0), ("800.00us", 0.8)])
def test_wrk_p99_in_any_unit(printed: str, ms: float) -> None:
    assert _wrk_p99_ms(WRK_OUTPUT.format(p99=printed)) == ms


def test_wrk_without_a_distribution_has_no_p99() -> None:
    assert _wrk_p99_ms("Requests/sec:  11382.44\n") is None


ROUTE = 'method="POST",route="/v1/courses/{course_id}/bookings"'
METRICS = f"""# HELP booking_grabs_total Grab answers by outcome
booking_grabs_total{{outcome="taken"}} 100.0
booking_grabs_total{{outcome="sold_out"}} 900.0
booking_grabs_from_memory_total{{outcome="sold_out"}} 850.0
booking_request_seconds_bucket{{le="0.025",{ROUTE},status="201"}} 0.0
booking_request_seconds_bucket{{le="0.05",{ROUTE},status="201"}} 40.0
booking_request_seconds_bucket{{le="0.1",{ROUTE},status="201"}} 98.0
booking_request_seconds_bucket{{le="0.25",{ROUTE},status="201"}} 100.0
booking_request_seconds_bucket{{le="+Inf",{ROUTE},status="201"}} 100.0
booking_request_seconds_bucket{{le="0.025",{ROUTE},status="409"}} 900.0
booking_request_seconds_bucket{{le="+Inf",{ROUTE},status="409"}} 900.0
booking_request_seconds_bucket{{le="0.025",method="GET",route="/v1/courses",status="200"}} 7.0
booking_request_seconds_bucket{{le="+Inf",method="GET",route="/v1/courses",status="200"}} 7.0
"""


def test_the_service_view_of_a_rush() -> None:
    """What was counted between two readings: no 201 and no grab outcome before the rush, the
    409s all before it (so none of them in the view), the GET route never."""
    before = parse_view("\n".join(line for line in METRICS.splitlines()
                                  if 'status="201"' not in line and "taken" not in line))
    seen = parse_view(METRICS).since(before)
    assert seen.outcomes() == {"taken": 100}
    assert seen.latency() == {"201": {"answers": 100, "p50_le_ms": 100.0, "p99_le_ms": 250.0}}
    whole = parse_view(METRICS)
    assert answers(whole.outcomes()) == 1000  # those from memory are among the sold-outs
    assert whole.latency()["409"] == {"answers": 900, "p50_le_ms": 25.0, "p99_le_ms": 25.0}


def test_a_quantile_beyond_the_last_bucket_has_no_bound() -> None:
    text = (f'booking_request_seconds_bucket{{le="10.0",{ROUTE},status="201"}} 1.0\n'
            f'booking_request_seconds_bucket{{le="+Inf",{ROUTE},status="201"}} 10.0\n')
    assert parse_view(text).latency()["201"] == {"answers": 10, "p50_le_ms": None,
                                                 "p99_le_ms": None}


def test_decision_waits_from_every_thread_in_tenths_of_a_millisecond(tmp_path) -> None:
    """Thread 0 timed 98 sold-out answers at 10.0-10.1 ms and one 201 at 250.3 ms; thread 1 a
    201 at 12.5 ms; a thread that wrote nothing counts nothing."""
    (tmp_path / "wrk-0-waits.txt").write_text("409 100 98\n201 2503 1\n")
    (tmp_path / "wrk-1-waits.txt").write_text("201 125 1\n")
    waits = read_waits(tmp_path, threads=3)
    assert waits == {"201": {2503: 1, 125: 1}, "409": {100: 98}}
    figures = wait_figures(every_answer(waits))
    assert figures == {"decisions_timed": 100, "p50": 10.1, "p95": 10.1, "p99": 12.6,
                       "max": 250.4}
    assert wait_figures(waits["201"])["p50"] == 12.6  # the tail is the 201s'
    assert wait_figures(waits["409"])["max"] == 10.1


def test_no_decisions_timed_means_no_quantiles() -> None:
    assert wait_figures(Counter()) == {"decisions_timed": 0, "p50": None, "p95": None,
                                               "p99": None, "max": None}
