"""The event loop `booking serve` (and the bench's bare stack) runs on: uvloop, except that a
worker admits every connection waiting at its listening socket at once.

uvloop's libuv accepts one connection per turn of the loop (libuv PR #3696, since 1.45). On
release night new connections come in bursts while a worker is busy, and a turn then lasts tens
of milliseconds, so the hundredth newcomer waited a hundred turns: in `booking bench`'s bare
stack 100-160 first requests took 0.3-2 s, one turn apart, while every other answer took under
0.1 s. asyncio's own loop accepts up to the backlog per turn, but answers about a tenth fewer
requests. Here the listening socket is watched by the loop and accepted from until it is empty;
each connection is then handed to uvloop as an accepted socket, so everything after the accept
is uvloop's own.

uvicorn takes the loop by name: `loop=UVICORN_LOOP`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

import uvloop

log = logging.getLogger("booking.ops.event_loop")

# After an accept fails for want of resources (EMFILE and the like), the socket stays readable;
# the loop stops watching it this long instead of spinning (as asyncio's own loop does).
RETRY_AFTER_S = 1.0

UVICORN_LOOP = "booking.ops.event_loop:new_event_loop"


class Admission:
    """What `create_server` returns here: the listening socket, watched by the loop. It has the
    part of asyncio's Server that uvicorn uses (close, wait_closed, sockets)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol_factory: Callable[[], asyncio.BaseProtocol], backlog: int, *,
                 owns_socket: bool = False) -> None:
        self._loop, self._sock = loop, sock
        self._protocol_factory, self._backlog = protocol_factory, backlog
        self._serving, self._owns_socket = True, owns_socket
        self._handing_over: set[asyncio.Task[None]] = set()  # held until each is done
        sock.setblocking(False)
        sock.listen(backlog)
        self.sockets = [sock]
        loop.add_reader(sock.fileno(), self._admit)

    def _admit(self) -> None:
        """Accept every connection waiting (up to the backlog, so a flood cannot hold the loop)."""
        for _ in range(self._backlog):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # the client gave up while it waited
                continue
            except OSError as exc:
                log.warning("cannot accept connections for now (%s); trying again in %.0f s",
                            exc, RETRY_AFTER_S)
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(RETRY_AFTER_S, self._watch_again)
                return
            task = self._loop.create_task(self._serve(conn))
            self._handing_over.add(task)
            task.add_done_callback(self._handing_over.discard)

    def _watch_again(self) -> None:
        if self._serving:
            self._loop.add_reader(self._sock.fileno(), self._admit)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._protocol_factory, conn)
        except Exception as exc:  # the connection is lost; the server goes on
            log.warning("could not take an accepted connection: %s", exc)
            conn.close()

    def is_serving(self) -> bool:
        return self._serving

    def close(self) -> None:
        """Stop accepting; the connections already taken go on until they end."""
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self._sock.fileno())
            if self._owns_socket:  # made here from a host and port; a given socket is the giver's
                self._sock.close()

    async def wait_closed(self) -> None:
        return None


class AdmittingLoop(uvloop.Loop):
    """uvloop with `create_server` taking every waiting connection per turn (plain TCP only;
    anything else is uvloop's own)."""

    async def create_server(self, protocol_factory: Callable[[], asyncio.BaseProtocol],
                            host: Any = None, port: Any = None, *,
                            sock: socket.socket | None = None, backlog: int = 100,
                            ssl: Any = None, **kwargs: Any) -> Any:
        plain = ssl is None and not kwargs.get("reuse_port")
        if plain and sock is None and isinstance(host, str) and isinstance(port, int):
            # uvicorn with one worker names a host and port instead of handing a socket over
            made = socket.create_server((host, port), backlog=backlog)
            return Admission(self, made, protocol_factory, backlog, owns_socket=True)
        if not plain or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return await super().create_server(protocol_factory, host, port, sock=sock,
                                               backlog=backlog, ssl=ssl, **kwargs)
        return Admission(self, sock, protocol_factory, backlog)


def new_event_loop() -> asyncio.AbstractEventLoop:
    return AdmittingLoop()
