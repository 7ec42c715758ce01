"""The service's event loop admits a burst of new connections in one turn, not one per turn.

The burst is made before the loop looks: the clients connect to a listening socket nobody has
accepted from yet (the kernel completes their handshakes), and each sends its request. Then the
server starts on the loop, and a callback that reschedules itself counts the loop's turns. A
plain uvloop loop (libuv >= 1.45) takes one connection per turn, so its fortieth connection
would be made some forty turns after its first.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from booking.ops.event_loop import Admission, new_event_loop

BURST = 40


class Turns:
    """Counts the loop's turns: a callback that reschedules itself runs once per turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.count, self._loop, self._on = 0, loop, True
        loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.count += 1
        if self._on:
            self._loop.call_soon(self._tick)

    def stop(self) -> None:
        self._on = False


class Echo(asyncio.Protocol):
    """Records the turn its connection was made on, and answers the first bytes it gets."""

    def __init__(self, turns: Turns, made: list[int]) -> None:
        self._turns, self._made = turns, made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._made.append(self._turns.count)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._transport.write(b"seen " + data)  # type: ignore[attr-defined]


async def _serve_burst(listener: socket.socket,
                       clients: list[socket.socket]) -> tuple[list[int], list[bytes], object]:
    loop = asyncio.get_running_loop()
    turns, made = Turns(loop), []
    server = await loop.create_server(lambda: Echo(turns, made), sock=listener, backlog=128)
    try:
        answers = [await asyncio.wait_for(loop.sock_recv(client, 100), 10) for client in clients]
    finally:
        turns.stop()
        server.close()
        await server.wait_closed()
    return made, answers, server


def test_a_burst_of_new_connections_is_admitted_in_one_turn() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    clients = [socket.create_connection(listener.getsockname()) for _ in range(BURST)]
    for i, client in enumerate(clients):  # the burst, in the kernel's queue before the loop runs
        client.sendall(f"hello {i}".encode())
        client.setblocking(False)
    loop = new_event_loop()
    try:
        made, answers, server = loop.run_until_complete(_serve_burst(listener, clients))
    finally:
        loop.close()
        listener.close()
        for client in clients:
            client.close()
    assert isinstance(server, Admission)
    assert answers == [f"seen hello {i}".encode() for i in range(BURST)]
    assert len(made) == BURST
    assert max(made) - min(made) <= 1, f"connections made on turns {made}"


def test_a_unix_socket_is_served_by_uvloop_itself(tmp_path: Path) -> None:
    """Only TCP is admitted here; anything else gets uvloop's own server."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "s"))
    loop = new_event_loop()

    async def start() -> object:
        server = await asyncio.get_running_loop().create_server(asyncio.Protocol, sock=listener)
        server.close()
        return server

    try:
        server = loop.run_until_complete(start())
    finally:
        loop.close()
        listener.close()
    assert not isinstance(server, Admission)


def test_a_host_and_port_get_a_socket_of_their_own_closed_with_the_server() -> None:
    """uvicorn with one worker names a host and port; the socket made for them is the
    server's, and answers until the server is closed."""
    loop = new_event_loop()

    async def serve_once() -> tuple[object, bytes, socket.socket]:
        turns, made = Turns(asyncio.get_running_loop()), []
        server = await asyncio.get_running_loop().create_server(
            lambda: Echo(turns, made), host="127.0.0.1", port=0, backlog=16)
        listener = server.sockets[0]
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        writer.write(b"one")
        answer = await asyncio.wait_for(reader.read(100), 10)
        writer.close()
        turns.stop()
        server.close()
        return server, answer, listener

    try:
        server, answer, listener = loop.run_until_complete(serve_once())
    finally:
        loop.close()
    assert isinstance(server, Admission)
    assert answer == b"seen one"
    assert listener.fileno() == -1  # closed with the server
