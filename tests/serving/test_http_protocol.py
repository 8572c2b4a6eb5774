"""One system call per response: the coalescing httptools protocol, alone and under a real uvicorn server."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tastebud.serving.http import PROTOCOL, CoalescingHttpProtocol, CoalescingTransport, http_protocol


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5)}.get(name, default)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop that is not running: callbacks the transport schedules on it never run by themselves."""
    new = asyncio.new_event_loop()
    yield new
    new.close()


def test_writes_are_held_until_flushed_and_sent_joined(loop: asyncio.AbstractEventLoop) -> None:
    real = FakeTransport()
    t = CoalescingTransport(real, loop)
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    t.write(b"")  # nothing to send is nothing held
    t.writelines([b"{", b"}"])
    assert real.writes == [] and t.get_write_buffer_size() == 21
    t.flush()
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"] and t.get_write_buffer_size() == 0
    t.flush()  # nothing held: no empty write
    assert len(real.writes) == 1
    assert t.get_extra_info("peername") == ("127.0.0.1", 5)  # everything else is the transport's


def test_held_bytes_go_out_at_the_next_turn_of_the_loop_without_a_flush() -> None:
    async def main() -> list[bytes]:
        real = FakeTransport()
        t = CoalescingTransport(real, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # e.g. written while the app waits for the body
        assert real.writes == []
        await asyncio.sleep(0)
        return real.writes

    assert asyncio.run(main()) == [b"HTTP/1.1 100 Continue\r\n\r\n"]


def test_close_sends_what_is_held_and_abort_drops_it(loop: asyncio.AbstractEventLoop) -> None:
    real = FakeTransport()
    t = CoalescingTransport(real, loop)
    t.write(b"bye")
    t.close()
    assert real.writes == [b"bye"] and real.closed
    t.write(b"late")  # written after the close: never reaches the closed transport
    t.flush()
    assert real.writes == [b"bye"]

    other = FakeTransport()
    t = CoalescingTransport(other, loop)
    t.write(b"never")
    t.abort()
    assert other.aborted and other.writes == []


def test_the_protocol_follows_the_setting() -> None:
    from tastebud.config import ServingSettings as ServingConfig

    assert http_protocol(ServingConfig()) == PROTOCOL
    assert http_protocol(ServingConfig(coalesce_writes=False)) == "auto"
    module, name = PROTOCOL.split(":")
    assert getattr(__import__(module, fromlist=[name]), name) is CoalescingHttpProtocol


# ------------------------------------------------------------------------------------------- under uvicorn

#: Per response, the writes that reached the socket's transport (recorded below the protocol under test).
SENDS: list[int] = []


class Recorder:
    """Counts the writes of one connection on their way to the real transport."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        SENDS.append(len(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class RecordedCoalescing(CoalescingHttpProtocol):
    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(Recorder(transport))


class RecordedPlain(HttpToolsProtocol):
    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(Recorder(transport))


GO_ON = threading.Event()


async def small(request: Request) -> JSONResponse:
    return JSONResponse({"user": request.path_params["user"], "items": list(range(10))})


async def stream(request: Request) -> StreamingResponse:
    async def chunks() -> Any:
        yield b"first;"
        deadline = time.monotonic() + 10
        while not GO_ON.is_set() and time.monotonic() < deadline:  # the client must see the first chunk first
            await asyncio.sleep(0.01)
        yield b"second" if GO_ON.is_set() else b"held"

    return StreamingResponse(chunks(), media_type="text/plain")


async def echo(request: Request) -> PlainTextResponse:
    return PlainTextResponse((await request.body()).decode())


APP = Starlette(routes=[Route("/small/{user}", small), Route("/stream", stream),
                        Route("/echo", echo, methods=["POST"])])  # fmt: skip


@pytest.fixture(params=[RecordedCoalescing, RecordedPlain], ids=["coalescing", "uvicorn"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[int, type]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    config = uvicorn.Config(APP, host="127.0.0.1", port=port, http=request.param, log_level="warning",
                            lifespan="off")  # fmt: skip
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port, request.param
    finally:
        srv.should_exit = True
        thread.join(10)


class Reader:
    """Whole responses (Content-Length bodies only) off one connection, keeping what arrived of the next one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.data = sock, b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, "the server closed the connection"
        self.data += chunk

    def response(self) -> bytes:
        while b"\r\n\r\n" not in self.data:
            self._fill()
        head, _, rest = self.data.partition(b"\r\n\r\n")
        length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
        while len(rest) < length:
            self._fill()
            head, _, rest = self.data.partition(b"\r\n\r\n")
        self.data = rest[length:]
        return head + b"\r\n\r\n" + rest[:length]


def test_keep_alive_responses_take_one_send_each(server: tuple[int, type]) -> None:
    port, protocol = server
    SENDS.clear()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = Reader(sock)
        for user in ("u1", "u2", "u3"):
            sock.sendall(f"GET /small/{user} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            response = reader.response()
            assert response.startswith(b"HTTP/1.1 200") and f'"user":"{user}"'.encode() in response
        # two requests in one segment (pipelined): both answered, in order
        sock.sendall(b"GET /small/a HTTP/1.1\r\nHost: x\r\n\r\nGET /small/b HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b'"user":"a"' in reader.response() and b'"user":"b"' in reader.response()
    expected = 1 if protocol is RecordedCoalescing else 2  # uvicorn's own: headers, then body
    assert SENDS and len(SENDS) == 5 * expected


def test_a_streamed_chunk_is_not_held_until_the_stream_ends(server: tuple[int, type]) -> None:
    port, _ = server
    GO_ON.clear()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"first;" not in data:
            chunk = sock.recv(65536)
            assert chunk, "connection closed before the first chunk"
            data += chunk
        GO_ON.set()
        while not data.endswith(b"0\r\n\r\n"):
            data += sock.recv(65536)
    assert b"second" in data and b"held" not in data


def test_expect_100_continue_is_answered_before_the_body_is_sent(server: tuple[int, type]) -> None:
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"hello")
        assert Reader(sock).response().endswith(b"\r\n\r\nhello")
