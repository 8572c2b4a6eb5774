"""uvicorn's httptools protocol, sending each response in one system call instead of two.

uvicorn writes a response's status line and headers with one ``transport.write`` and its body with another. On an
idle connection asyncio sends each write at once, so every response costs two ``send`` calls, two TCP segments and,
on the client's side, often two wake-ups. A profile of a serving worker under load put 11% of its samples in those
two writes (the header write alone 8%). :class:`CoalescingTransport` holds a connection's writes until the response
is complete, then sends them joined: one ``send`` and one segment per response, the same bytes in the same order.

Nothing waits longer than before for a byte: the held bytes are sent when the response completes, when the
connection closes, or at the next turn of the event loop at the latest (a streaming response's chunks, a
``100 Continue``), whichever comes first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["PROTOCOL", "CoalescingHttpProtocol", "CoalescingTransport", "http_protocol"]

#: What ``uvicorn.run(http=...)`` takes to serve with :class:`CoalescingHttpProtocol` (an import string, so that
#: worker processes resolve it themselves).
PROTOCOL = "tastebud.serving.http:CoalescingHttpProtocol"


def http_protocol(serving: Any) -> str:
    """``uvicorn.run``'s ``http`` for the serving settings: :data:`PROTOCOL`, or uvicorn's own (``auto``) when
    ``serving.coalesce_writes`` is off."""
    return PROTOCOL if serving.coalesce_writes else "auto"


class CoalescingTransport:
    """A transport whose writes are held until :meth:`flush` (or the next turn of the loop) and sent as one.

    Every other attribute is the wrapped transport's. ``abort`` drops what is held, as the transport's own buffer
    would be dropped.
    """

    __slots__ = ("_held", "_loop", "_scheduled", "_transport")

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._held.append(bytes(data))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Send what is held, joined into one write."""
        self._scheduled = False
        held = self._held
        if not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(b) for b in self._held)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpProtocol(HttpToolsProtocol):
    """:class:`~uvicorn.protocols.http.httptools_impl.HttpToolsProtocol` writing through a
    :class:`CoalescingTransport`, flushed as each response completes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        transport = self.transport
        if isinstance(transport, CoalescingTransport):
            transport.flush()
        super().on_response_complete()
