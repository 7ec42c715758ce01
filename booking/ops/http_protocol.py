"""The HTTP protocol `booking serve` (and the bench's bare stack) runs: uvicorn's httptools
protocol, except that a response's head leaves with its body in one write.

uvicorn writes the status line and headers when the app sends `http.response.start`, and the
body when it sends `http.response.body`: two writes, so two `send` system calls and two TCP
segments for an answer of a hundred bytes. py-spy on a worker answering a flood of 429s put 37 %
of its samples on those two writes. Here the head is held until the next write of the
connection and goes out with it; if no body follows within the same pass of the loop (a stream
that has nothing to say yet), the head goes out alone at the next pass.

uvicorn takes the protocol by name: `http=UVICORN_HTTP`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

UVICORN_HTTP = "booking.ops.http_protocol:OneWriteProtocol"


class HeadHolding:
    """A connection's transport that holds the first write of each response (its head) until
    the next write or the next pass of the loop, whichever comes first. Everything else is the
    transport's own."""

    __slots__ = ("_head_next", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._head_next = True  # the next write begins a response

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines((held, data))  # one system call for both
        elif self._head_next:
            self._head_next = False
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        self.flush()
        self._transport.writelines(chunks)

    def flush(self) -> None:
        """Send a held head now; drop it if the connection has been closed meanwhile (the
        client is gone, and a closed transport refuses writes with an error)."""
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def response_done(self) -> None:
        """The response is complete: the next write is the head of the next one."""
        self.flush()
        self._head_next = True

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a `HeadHolding` transport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadHolding(transport, self.loop))  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        self.transport.response_done()  # type: ignore[attr-defined]
        super().on_response_complete()
