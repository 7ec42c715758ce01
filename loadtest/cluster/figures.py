"""From what a rehearsal saw to its figures and verdict.

HAProxy's request log is the one record of every request (the rush's and the probes'): when it
was accepted, how long it took, which app answered (or none), with what status. The faults are
measured on it, each in a window of its own:

- Redis: grabs of the killed primary's courses answered from the kill on: how many failed (5xx
  or no answer), for how long after the kill, and when a grab of that shard was first booked
  again (recovered); grabs of the other shards' courses in the same window must all be answered.
- App: every request that ended from the kill until a second after HAProxy took the app out:
  how many failed (in flight on the dead app: HAProxy answers 502), for how long, whether HAProxy
  took it out within fall x inter, whether it sent it anything afterwards, and whether any
  request on the living apps failed meanwhile.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from booking.ops.check import CheckReport
from loadtest.cluster.balancer import Logged, ServerStates
from loadtest.cluster.crowd import ForwardedSeen, LiveSeen, Probes, WrkRush
from loadtest.cluster.faults import AppFault, RedisFault
from loadtest.cluster.plan import Plan

DETECTION_SLACK_S = 0.5  # the stats socket is polled every 0.1 s; checks take a moment
AFTER_OUT_S = 1.0  # requests ending this long after an app was taken out are its fault's still
BOOKED = (200, 201)


@dataclass(slots=True)
class Seen:
    """Everything one rehearsal collected."""

    plan: Plan
    opens_at: float
    rush_from: float
    rush_until: float
    requests: list[Logged]
    shards: dict[int, int]  # course id -> port of its primary before the fault
    wrk: WrkRush
    probes: Probes
    live: tuple[LiveSeen, LiveSeen]  # before the faults; after them, grabs via the restarted app
    forwarded: ForwardedSeen
    redis: RedisFault
    app: AppFault
    states: ServerStates
    cpu: dict[str, float]
    check_before_reconcile: CheckReport
    check: CheckReport


def ended(request: Logged) -> float:
    return request.at + max(request.active_ms, 0) / 1000


def _s(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


def redis_figures(seen: Seen) -> dict[str, object]:
    fault = seen.redis
    window_end = seen.app.killed_at - AFTER_OUT_S  # the app fault's window starts at its kill
    grabs = [r for r in seen.requests if r.course_id in seen.shards
             and fault.killed_at <= ended(r) < window_end]
    victim = [r for r in grabs if r.course_id in fault.courses]
    failed = [r for r in victim if r.failed]
    last_failure = max(map(ended, failed), default=None)
    recovered_at = min((ended(r) for r in victim if r.status in BOOKED
                        and ended(r) > (last_failure or fault.killed_at)), default=None)
    until = recovered_at if recovered_at is not None else window_end
    others = [r for r in grabs if r.course_id not in fault.courses]
    meanwhile = [r for r in others if ended(r) <= until]
    return {
        "primary": fault.port, "courses_on_its_shard": len(fault.courses),
        "app1_live_seats_subscribed_through_it": fault.live_subscriber,
        "replica_took_over_s": _s(fault.settled_at - fault.killed_at
                                  if fault.settled_at else None),
        "grabs_of_its_shard": len(victim), "failed": len(failed),
        "failed_by_status": dict(Counter(r.status for r in failed)),
        "status_503": sum(1 for r in failed if r.status == 503),
        "failures_for_s": _s(last_failure - fault.killed_at if last_failure else 0.0),
        "recovered_s": _s(recovered_at - fault.killed_at if recovered_at else None),
        "other_shards_grabs_until_recovered": len(meanwhile),
        "other_shards_slowest_ms": max((r.active_ms for r in meanwhile), default=None),
        "other_shards_failed": sum(1 for r in others if r.failed),
    }


def app_figures(seen: Seen) -> dict[str, object]:
    fault, checks = seen.app, seen.plan.checks
    out_at = seen.states.went(fault.server, "DOWN", fault.killed_at)
    window_end = (out_at or fault.killed_at + checks.bound_s) + AFTER_OUT_S
    window = [r for r in seen.requests if fault.killed_at <= ended(r) <= window_end]
    failed = [r for r in window if r.failed]
    on_it = [r for r in failed if r.server in (fault.server, "<NOSRV>")]
    last_failure = max(map(ended, failed), default=None)
    recovered_at = max(t for t in (out_at, last_failure, fault.killed_at) if t is not None)
    back_from = fault.restarted_at or float("inf")
    sent_after = sum(1 for r in seen.requests if r.server == fault.server
                     and out_at is not None and out_at + 0.1 < r.at < back_from)
    return {
        "app": fault.server, "taken_out_s": _s(out_at - fault.killed_at if out_at else None),
        "bound_s": checks.bound_s, "requests_meanwhile": len(window),
        "failed": len(on_it), "failed_by_status": dict(Counter(r.status for r in on_it)),
        "failures_for_s": _s(last_failure - fault.killed_at if last_failure else 0.0),
        "sent_to_it_after_taken_out": sent_after,
        "failed_on_living_apps": len(failed) - len(on_it),
        "recovered_s": _s(recovered_at - fault.killed_at if out_at else None),
        "orphaned_pending_seats": len(fault.orphans),
        "orphans_back_after_s": fault.orphans_back_s,
        "back_in_haproxy_after_restart_s": _s(fault.back_at - fault.restarted_at
                                              if fault.back_at and fault.restarted_at else None),
    }


def request_figures(seen: Seen) -> dict[str, object]:
    rushed = [r for r in seen.requests if seen.rush_from <= r.at <= seen.rush_until]
    seconds = seen.rush_until - seen.rush_from
    decisions = sum(n for key, n in seen.wrk.counts.items()
                    if key.split(":")[0] in ("200", "201", "409"))
    return {
        "requests": len(rushed), "rush_s": _s(seconds),
        "requests_per_s": round(len(rushed) / seconds, 1) if seconds else None,
        "by_status": dict(sorted(Counter(str(r.status) for r in rushed).items())),
        "by_app": dict(sorted(Counter(r.server for r in rushed).items())),
        "wrk_residents_started": seen.wrk.started, "wrk_all_done": seen.wrk.all_done,
        "wrk_answers": dict(sorted(seen.wrk.counts.items())), "wrk_decisions": decisions,
        "wrk_latency_ms": {k.removesuffix("_us"): v / 1000 for k, v in seen.wrk.summary.items()
                           if k.endswith("_us") and isinstance(v, int)},
        "wrk_socket_errors": seen.wrk.summary.get("socket_errors", {}),
        "probe_grabs": len(seen.probes.answers),
        "haproxy_queue_max": seen.states.queue_max,
        "haproxy_longest_queue_wait_ms": max((r.queued_ms for r in rushed), default=0),
    }


def cpu_figures(seen: Seen, requests: int) -> dict[str, object]:
    per = {name: round(seconds * 1000 / requests, 3) if requests else None
           for name, seconds in seen.cpu.items()}
    return {"cpu_s": seen.cpu, "cpu_ms_per_request": per}


def live_figures(live: LiveSeen) -> dict[str, object]:
    return {"watched_on": live.watched_on, "grabbed_on": live.grabbed_on,
            "course_id": live.course_id, "grabs": len(live.received),
            "seats_left_before": live.snapshot, "seats_left_shown": live.last_seen,
            "shown_after_s": live.shown_after_s,
            "through_haproxy_after_s": live.through_haproxy_after_s, "seen": live.ok}


def figures(seen: Seen) -> dict[str, object]:
    requests = request_figures(seen)
    found = {
        **requests,
        **cpu_figures(seen, int(requests["requests"])),  # type: ignore[call-overload]
        "redis_fault": redis_figures(seen),
        "app_fault": app_figures(seen),
        "live_before_faults": live_figures(seen.live[0]),
        "live_after_faults": live_figures(seen.live[1]),
        "forwarded_for": {"limit": seen.forwarded.limit, "first_429": seen.forwarded.first_429,
                          "other_address_served": seen.forwarded.other_address_served},
        "check_before_reconcile": len(seen.check_before_reconcile.violations),
        "violations": len(seen.check.violations),
        "check": seen.check.summary(),
    }
    failed = verdict(seen, found)
    found["verdict"] = "PASS" if not failed else "FAIL"
    found["failed_because"] = failed
    return found


def verdict(seen: Seen, found: dict[str, object]) -> list[str]:
    """Why the rehearsal failed, one sentence a reason (empty: it passed)."""
    redis, app = found["redis_fault"], found["app_fault"]
    assert isinstance(redis, dict) and isinstance(app, dict)
    bound = seen.plan.checks.bound_s + DETECTION_SLACK_S
    reasons = {
        "the checker found violations": not seen.check.ok,
        "a grab of another shard failed while the Redis primary was down":
            redis["other_shards_failed"] != 0,
        "no grab of the killed primary's shard was booked again": redis["recovered_s"] is None,
        "HAProxy did not take the killed app out": app["taken_out_s"] is None,
        f"HAProxy took the killed app out after more than {bound} s":
            app["taken_out_s"] is not None and app["taken_out_s"] > bound,  # type: ignore[operator]
        "HAProxy sent requests to the killed app after taking it out":
            app["sent_to_it_after_taken_out"] != 0,
        "requests on the living apps failed after the app was killed":
            app["failed_on_living_apps"] != 0,
        "the killed app's pending seats did not come back":
            app["orphans_back_after_s"] is None,
        "before the faults, a live stream did not show grabs made through another app":
            not seen.live[0].ok,
        "after the faults, a live stream did not show grabs made through another app":
            not seen.live[1].ok,
        "the service did not judge the address HAProxy forwarded": not seen.forwarded.ok,
    }
    return [reason for reason, failed in reasons.items() if failed]


def summary(found: dict[str, object]) -> str:
    """The figures in a few lines a person reads."""
    f = found
    redis, app = f["redis_fault"], f["app_fault"]
    assert isinstance(redis, dict) and isinstance(app, dict)
    because = f["failed_because"]
    assert isinstance(because, list)
    return f"""
Cluster rehearsal
  requests through HAProxy: {f['requests']} in {f['rush_s']} s = {f['requests_per_s']}/s \
{f['by_status']}; by app {f['by_app']}
  wrk: {f['wrk_residents_started']} residents started, answers {f['wrk_answers']}, \
latency {f['wrk_latency_ms']} ms, socket errors {f['wrk_socket_errors']}
  HAProxy queue: at most {f['haproxy_queue_max']} waiting, longest wait \
{f['haproxy_longest_queue_wait_ms']} ms
  Redis primary :{redis['primary']} killed: replica took over after \
{redis['replica_took_over_s']} s; {redis['failed']} of {redis['grabs_of_its_shard']} grabs of \
its shard failed {redis['failed_by_status']} for {redis['failures_for_s']} s; booked again \
after {redis['recovered_s']} s; other shards: {redis['other_shards_grabs_until_recovered']} \
grabs answered meanwhile (slowest {redis['other_shards_slowest_ms']} ms), \
{redis['other_shards_failed']} failed until the app fault
  app {app['app']} killed: HAProxy took it out after {app['taken_out_s']} s (bound \
{app['bound_s']} s); {app['failed']} requests failed {app['failed_by_status']} for \
{app['failures_for_s']} s; {app['sent_to_it_after_taken_out']} sent to it afterwards; \
{app['failed_on_living_apps']} failed on the living apps; {app['orphaned_pending_seats']} \
orphaned pending seats, back after {app['orphans_back_after_s']} s; restarted, back in \
HAProxy after {app['back_in_haproxy_after_restart_s']} s
  live seats before the faults: {_live_line(f['live_before_faults'])}
  live seats after the faults:  {_live_line(f['live_after_faults'])}
  X-Forwarded-For: {f['forwarded_for']}
  CPU seconds: {f['cpu_s']}; ms per request: {f['cpu_ms_per_request']}
  checker before `booking reconcile`: {f['check_before_reconcile']} violation(s); after:
{f['check']}
verdict: {f['verdict']}{' (' + '; '.join(because) + ')' if because else ''}"""


def _live_line(live: object) -> str:
    assert isinstance(live, dict)
    return (f"watched on {live['watched_on']}, {live['grabs']} grabs through "
            f"{live['grabbed_on']}: {live['seats_left_before']} -> {live['seats_left_shown']} "
            f"shown after {live['shown_after_s']} s (through HAProxy after "
            f"{live['through_haproxy_after_s']} s)")
