"""`booking serve` with several workers: each listens on a socket of its own on the one port
(so the kernel spreads connections over them), a port in use is told in one sentence, and
SIGTERM stops every worker."""

from __future__ import annotations

import os
import socket
from collections import Counter

import psutil
from conftest import run_cli, service_env

from booking.ops.service import Service, free_port

CONNECTIONS = 64


def listening_sockets(pid: int, port: int) -> set[str]:
    """The process's listening sockets on `port`, each named by its inode ("socket:[n]")."""
    fds = [conn.fd for conn in psutil.Process(pid).net_connections(kind="tcp")
           if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port]
    return {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds}


def holders_of(clients: list[socket.socket], workers: list[int]) -> Counter[int]:
    """Which worker holds the server end of each client connection."""
    ours = {client.getsockname() for client in clients}
    held: Counter[int] = Counter()
    for pid in workers:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.status == psutil.CONN_ESTABLISHED and tuple(conn.raddr) in ours:
                held[pid] += 1
    return held


def test_each_worker_listens_on_its_own_socket_and_gets_its_share(stores, tmp_path):
    service = Service(service_env(stores, tmp_path, BOOKING_WORKERS="2"),
                      tmp_path / "server.log")
    with service:
        workers = service.worker_pids()
        assert len(workers) == 2
        sockets = [listening_sockets(pid, service.port) for pid in workers]
        assert [len(mine) for mine in sockets] == [1, 1] and sockets[0] != sockets[1]
        assert service.pid is not None and not listening_sockets(service.pid, service.port)

        clients = [socket.create_connection(("127.0.0.1", service.port), timeout=10)
                   for _ in range(CONNECTIONS)]
        try:
            for client in clients:  # answered: the connection is in a worker's hands
                client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                assert client.recv(64).startswith(b"HTTP/1.1 ")
            held = holders_of(clients, workers)
        finally:
            for client in clients:
                client.close()
    # By the hash of their addresses: fewer than 8 of 64 on one worker has odds below 1e-10.
    assert sum(held.values()) == CONNECTIONS and min(held[pid] for pid in workers) >= 8, held
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() !=
                   psutil.STATUS_ZOMBIE for pid in workers), "a worker outlived the service"


def test_a_port_in_use_is_one_sentence(stores, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(service_env(stores, tmp_path, BOOKING_WORKERS="2",
                                     BOOKING_PORT=str(port)), "serve")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
