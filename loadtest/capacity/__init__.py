"""A capacity model of the release path, calibrated on `booking bench` (issue 15).

A discrete-event model (SimPy) of a release's rush: burst arrivals, HAProxy's queue (per-server
maxconn, queue timeout), the app workers (each an asyncio loop on a core, stopped now and then
by CPython's full garbage collection), Redis shards (each a single thread running the pipelines
it is sent), group commit in Postgres, with a round trip per hop. Its service times come from
the CPU a `booking bench` run measured per decision.

`python -m loadtest.capacity --bench FILE` (or `--run-bench`) first rebuilds the bench's one-box
layout (the app workers, Redis, Postgres and wrk on one 2-core CPU) and prints model against
bench; only when decisions/s and p99 are both within 15 % does it project a city-size release
onto several app machines. Every figure it prints is a model's, with its assumptions beside it.
"""
