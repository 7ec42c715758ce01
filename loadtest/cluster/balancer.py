"""HAProxy in front of the app processes: its config rendered from `haproxy.cfg.template`, the
process, what it says about its servers (`show stat` on its stats socket, polled), and its
request log (one line per request, written to a file we read afterwards).

HAProxy is Debian's package (`apt-get install haproxy`); it runs in the foreground (`-db`), so
stopping it is stopping this one process.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import string
import subprocess
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from booking.ops.service import free_port

BACKEND = "booking_app"
STAT_EVERY_S = 0.1
START_TIMEOUT_S = 15
MAXCONN = 4096  # clients at once: within a default limit of open files
# "%Ts.%ms %s %ST %tsc %Tw %Ta %HM %HP" (see the template)
LOG_LINE = re.compile(r"^(\d+)\.(\d{3}) (\S+) (-?\d+) (\S+) (-?\d+) (-?\d+) (\S+) (\S+)$")
GRAB_PATH = re.compile(r"^/v1/courses/(\d+)/bookings$")


class BalancerError(RuntimeError):
    """HAProxy is missing or did not start; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Checks:
    """How HAProxy watches its servers: every `inter_ms`, every `fastinter_ms` after a traffic
    error, out after `fall` failures in a row; `maxconn` requests per server at once, the rest
    queued for at most `queue_timeout_s`."""

    inter_ms: int = 1000
    fastinter_ms: int = 250
    fall: int = 2
    maxconn: int = 32
    queue_timeout_s: int = 10

    @property
    def bound_s(self) -> float:
        """The longest a dead server may still be sent requests: `fall` checks at `inter`."""
        return self.fall * self.inter_ms / 1000


@dataclass(frozen=True, slots=True)
class Logged:
    """One request as HAProxy logged it: when it was accepted (epoch seconds), the server that
    answered (`<NOSRV>` when none), the status (-1: no answer), HAProxy's termination state
    (`--` normal; `SH`, `SC`, `sQ`, ...: see its manual), ms queued and active, method, path."""

    at: float
    server: str
    status: int
    termination: str
    queued_ms: int
    active_ms: int
    method: str
    path: str

    @property
    def course_id(self) -> int | None:
        """The course of a grab (POST /v1/courses/{id}/bookings); None for anything else."""
        match = GRAB_PATH.match(self.path)
        return int(match.group(1)) if match and self.method == "POST" else None

    @property
    def failed(self) -> bool:
        """A 5xx or no answer at all."""
        return self.status >= 500 or self.status < 0


@dataclass(slots=True)
class ServerStates:
    """What the stats socket said over time: each server's status changes (epoch, status) and
    the most requests the backend ever held in its queue."""

    changes: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    queue_max: int = 0

    def went(self, server: str, status_prefix: str, after: float) -> float | None:
        """When `server` was first seen in a status starting with `status_prefix` after `after`."""
        return next((at for at, status in self.changes.get(server, [])
                     if at >= after and status.startswith(status_prefix)), None)


def render(servers: list[tuple[str, int]], *, bind_port: int, stats_port: int,
           checks: Checks, threads: int = 1, log_target: str = "stdout") -> str:
    """The template with these servers (name, port on 127.0.0.1) and settings."""
    template = resources.files("loadtest.cluster").joinpath("haproxy.cfg.template").read_text()
    lines = "\n".join(f"    server {name} 127.0.0.1:{port}" for name, port in servers)
    return string.Template(template).substitute(
        log_target=log_target, threads=threads, maxconn=MAXCONN,
        stats_socket=f"ipv4@127.0.0.1:{stats_port}",
        queue_timeout=f"{checks.queue_timeout_s}s", bind=f"127.0.0.1:{bind_port}",
        check_inter=f"{checks.inter_ms}ms", check_fastinter=f"{checks.fastinter_ms}ms",
        check_fall=checks.fall, server_maxconn=checks.maxconn, servers=lines)


class Balancer:
    """HAProxy on a free loopback port in front of `servers`; `start()`, `stop()`."""

    def __init__(self, servers: list[tuple[str, int]], folder: Path, checks: Checks) -> None:
        self.servers = servers
        self.folder = folder
        self.checks = checks
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.config = folder / "haproxy.cfg"
        self.log_path = folder / "haproxy.log"
        self.stats_port = free_port()  # TCP: a socket path under a deep folder may be too long
        self.states = ServerStates()
        self._proc: subprocess.Popen[bytes] | None = None
        self._polling = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            raise BalancerError("the cluster rehearsal needs HAProxy: apt-get install haproxy "
                                "(or tests/install-debian.sh haproxy).")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(render(self.servers, bind_port=self.port,
                                      stats_port=self.stats_port, checks=self.checks))
        checked = subprocess.run([binary, "-c", "-f", str(self.config)],
                                 capture_output=True, text=True, check=False)
        if checked.returncode != 0:
            raise BalancerError(f"HAProxy refused {self.config}: "
                                f"{(checked.stdout + checked.stderr).strip()}")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen([binary, "-db", "-f", str(self.config)],
                                          stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        self._wait_all_up()
        self._polling.set()
        self._poller = threading.Thread(target=self._poll, name="haproxy-stats", daemon=True)
        self._poller.start()

    def _wait_all_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise BalancerError(f"HAProxy exited with {self._proc.returncode}; see "
                                    f"{self.log_path}")
            with contextlib.suppress(OSError):
                statuses = self.server_statuses()
                if statuses and all(s == "UP" for s in statuses.values()):
                    return
            if time.monotonic() > deadline:
                raise BalancerError(f"HAProxy did not see every server UP in "
                                    f"{START_TIMEOUT_S} s; see {self.log_path}")
            time.sleep(0.1)

    def stop(self) -> None:
        self._polling.clear()
        if self._poller is not None:
            self._poller.join(5)
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._proc = None

    # ------------------------------------------------------------------ the stats socket

    def stat_rows(self) -> list[dict[str, str]]:
        """`show stat` as rows keyed by its CSV header."""
        with socket.create_connection(("127.0.0.1", self.stats_port), timeout=2) as sock:
            sock.sendall(b"show stat\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        lines = b"".join(chunks).decode().splitlines()
        if not lines or not lines[0].startswith("# "):
            return []
        header = lines[0][2:].split(",")
        return [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]

    def server_statuses(self) -> dict[str, str]:
        return {row["svname"]: row["status"] for row in self.stat_rows()
                if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")}

    def wait_up(self, server: str, since: float, timeout_s: float = 15) -> float | None:
        """When (epoch) the stats poller first saw `server` UP after `since`; None if not
        within `timeout_s` from now."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            back = self.states.went(server, "UP", since)
            if back is not None:
                return back
            time.sleep(STAT_EVERY_S)
        return None

    def _poll(self) -> None:
        last: dict[str, str] = {}
        while self._polling.is_set():
            at = time.time()
            with contextlib.suppress(OSError, KeyError, ValueError):
                for row in self.stat_rows():
                    if row["pxname"] != BACKEND:
                        continue
                    if row["svname"] == "BACKEND":
                        self.states.queue_max = max(self.states.queue_max, int(row["qmax"] or 0))
                    elif row["svname"] != "FRONTEND" and last.get(row["svname"]) != row["status"]:
                        last[row["svname"]] = row["status"]
                        self.states.changes.setdefault(row["svname"], []).append(
                            (at, row["status"]))
            time.sleep(STAT_EVERY_S)

    # ------------------------------------------------------------------ the request log

    def requests(self) -> list[Logged]:
        """Every request HAProxy has logged so far (other lines, e.g. state changes, skipped)."""
        logged = []
        if not self.log_path.exists():
            return logged
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = LOG_LINE.match(line.strip())
            if match:
                secs, millis, server, status, term, queued, active, method, path = match.groups()
                logged.append(Logged(int(secs) + int(millis) / 1000, server, int(status), term,
                                     int(queued), int(active), method, path))
        return logged
