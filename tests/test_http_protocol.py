"""An answer leaves the server in one write, and nothing is held back for long.

`booking serve` runs uvicorn with `booking/ops/http_protocol.py`, which sends a response's head
together with its body. The write count is the server process's own (`syscw` in /proc/<pid>/io,
the write-family system calls it made), so the test sees what the kernel saw, not what the code
meant to do. The other tests serve a small ASGI app in this process on the same protocol: an
answer whose body comes later still shows its head at once, and pipelined requests each get
their whole answer, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn

from booking.ops.event_loop import new_event_loop
from booking.ops.http_protocol import UVICORN_HTTP, HeadHolding
from booking.ops.service import free_port

ROOT = Path(__file__).resolve().parent.parent
REQUEST = b"POST /v1/courses/7/bookings HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
ANSWERS = 20


def _writes_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("no syscw in /proc/<pid>/io")


def _received(conn: socket.socket) -> bytes:
    data = conn.recv(65536)
    if not data:
        raise AssertionError("the server closed the connection mid-answer")
    return data


def _read_answer(conn: socket.socket, pending: bytearray) -> bytes:
    """One whole answer (head and Content-Length body) off the connection."""
    while b"\r\n\r\n" not in pending:
        pending += _received(conn)
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(rest) < length:
        rest += _received(conn)
    pending[:] = rest[length:]
    return head + b"\r\n\r\n" + rest[:length]


def test_each_answer_of_the_bare_stack_is_one_write() -> None:
    """Twenty answers on one kept-alive connection: twenty writes by the server (uvicorn's own
    protocol makes forty, a head and a body each)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "booking.ops.ceiling", "--port", str(port), "--workers", "1"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        conn = _connect_when_listening(port, server)
        pending = bytearray()
        conn.sendall(REQUEST)  # the first answer warms the connection up
        assert _read_answer(conn, pending).startswith(b"HTTP/1.1 201 ")
        before = _writes_of(server.pid)
        for _ in range(ANSWERS):
            conn.sendall(REQUEST)
            answer = _read_answer(conn, pending)
            assert answer.startswith(b"HTTP/1.1 201 ") and answer.endswith(b'"confirmed"}')
        assert _writes_of(server.pid) - before == ANSWERS
        conn.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def _connect_when_listening(port: int, server: subprocess.Popen[bytes]) -> socket.socket:
    for _ in range(600):
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except ConnectionRefusedError:
            if server.poll() is not None:
                raise AssertionError(server.stderr.read().decode()) from None  # type: ignore[union-attr]
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=0.05)
    raise AssertionError("the bare stack never listened")


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[int]:
    """uvicorn on this loop with the service's protocol; yields its port."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, http=UVICORN_HTTP, lifespan="off",
                            access_log=False, log_level="warning", log_config=None)
    server = uvicorn.Server(config)
    started = asyncio.Event()
    original_startup = server.startup

    async def startup(sockets: Any = None) -> None:
        await original_startup(sockets)
        started.set()

    server.startup = startup  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    await asyncio.wait_for(started.wait(), 30)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def test_a_head_whose_body_comes_later_is_sent_at_once() -> None:
    """A stream that has nothing to say yet (a live-seat stream between changes): the client
    has the head while the body is still to come."""
    head_read, body_sent = asyncio.Event(), asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await head_read.wait()
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        body_sent.set()
        await send({"type": "http.response.body", "body": b""})

    async with serving(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /live HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 ") and not body_sent.is_set()
        head_read.set()
        assert await asyncio.wait_for(reader.readuntil(b"data: 1\n\n"), 10)
        assert await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10)  # the chunked end
        writer.close()


async def test_pipelined_requests_each_get_their_whole_answer_in_order() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async with serving(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"".join(b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(5)))
        for i in range(5):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 ")
            body = await asyncio.wait_for(reader.readexactly(len(b"/%d" % i)), 10)
            assert body == b"/%d" % i
        writer.write(b"HEAD /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 ") and b"connection: close" in head
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing after the head
        writer.close()


def test_a_head_held_when_the_connection_closes_is_dropped_quietly() -> None:
    """A head held on a connection that is closed by the next pass of the loop is dropped. On
    the service's loop (uvloop) a write to a closed connection raises, which the loop would
    report as an error in a callback."""
    loop = new_event_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))

    async def scenario() -> HeadHolding:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        _, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        holding = HeadHolding(writer.transport, loop)  # type: ignore[arg-type]
        writer.close()
        await writer.wait_closed()  # the connection is gone for good
        holding.write(b"HTTP/1.1 200 OK\r\n\r\n")  # held until the next pass
        await asyncio.sleep(0)  # the pass that flushes
        await asyncio.sleep(0)
        server.close()
        return holding

    try:
        holding = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert holding.get_write_buffer_size() == 0
    assert errors == []
