"""The rehearsal past one machine: a Redis Cluster, several app processes behind HAProxy, one
Postgres, a release-day rush through the balancer, and two faults in the middle of it.

    python -m loadtest.cluster                       # 3 apps, 40,000 residents, 22 s of rush
    python -m loadtest.cluster --apps 2 --residents 5000 --rush 10 --live-at 0.5 \
        --redis-fault-at 2 --app-fault-at 6          # the short form the suite runs

It starts a private Redis Cluster (3 primaries + 3 replicas, booking/core/embedded_cluster.py),
one Postgres (DATABASE_URL if set, else a private one), N `booking serve` processes on
BOOKING_REDIS_CLUSTER=1 (each with its own folder and workers, as hosts would be) and HAProxy in
front (loadtest/cluster/haproxy.cfg.template: leastconn, health checks on /ready, per-server
maxconn and a queue, X-Forwarded-For). It publishes a release and rushes it with wrk through
HAProxy (`booking bench`'s own script), while one probe per Redis primary keeps grabbing a
roomy course of its shard. Mid-rush:

- a resident watches a course's live seats (SSE) on one app (and through HAProxy) while grabs
  go through another;
- one Redis primary is SIGKILLed: its replica takes over; the failed grabs of its shard are
  counted and timed; grabs of the other shards must all be answered;
- one app process is SIGKILLed: HAProxy must take it out within fall x inter of its health
  checks; the requests that failed are counted and timed; the seats its grabs in flight left
  pending must come back by a living process's reconciler (BOOKING_PENDING_TIMEOUT=5).

After the rush the killed app is started again (HAProxy must put it back) and the live-seat
watch is repeated, grabs going through it. Then the per-address rate limit is shown to judge
the address HAProxy forwarded, the checker runs before and after `booking reconcile`, and the
figures are printed: requests, the failures of each fault and how long they lasted, time to
recover, CPU seconds per request of the apps, Redis, Postgres and HAProxy, the verdict, then
one JSON line. Exit code 0 only when the checker is clean, no grab of another shard failed,
each fault recovered (the shard booked again; the app out within the bound, nothing sent to it
afterwards, nothing failed on the others, its pending seats back), both live watches showed
the grabs and the forwarded address was judged; 1 otherwise, 2 when it could not run.

Needs HAProxy (`apt-get install haproxy`, or tests/install-debian.sh haproxy) and wrk (`apt-get
install wrk`). By concern: `plan` (sizes and moments), `balancer` (HAProxy), `stack` (starting
and breaking the parts), `cpu` (CPU per part), `crowd` (wrk, probes, live seats, addresses),
`faults` (the two faults), `figures` (measures and verdict), `run` (one whole rehearsal) and
`__main__` (the command).
"""

from loadtest.cluster.plan import Plan
from loadtest.cluster.run import rehearse

__all__ = ["Plan", "rehearse"]
