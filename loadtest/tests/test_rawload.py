"""loadtest.rawload against a small asyncio HTTP server of the test's own (in a thread).

What is checked is the generator's contract, never the machine's speed: the
schedule is open loop (a stall is latency, not fewer requests), statuses,
timeouts and closed connections are counted, and N connections are held at once.
The only latency assertions are lower bounds the test server imposes itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from loadtest import rawload

HOST = "127.0.0.1"


class TinyServer:
    """HTTP/1.1 keep-alive server: /ok 200, /shed 503, /hang never answers, /close drops the
    connection, /chunked a chunked 200; a stall window holds every answer until it ends."""

    def __init__(self) -> None:
        self.port = 0
        self.open = 0
        self.peak_open = 0
        self.accepted = 0
        self.requests = 0
        self.stall_until = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._stop: asyncio.Event | None = None

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, HOST, 0, backlog=4096)
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        async with server:
            await self._stop.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length:
                    await reader.readexactly(length)
                self.requests += 1
                path = head.split(b" ", 2)[1]
                wait = self.stall_until - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if path == b"/hang":
                    await asyncio.sleep(3600)
                if path == b"/close":
                    writer.transport.abort()
                    return
                if path == b"/chunked":
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                    continue
                status = b"503 Service Unavailable" if path == b"/shed" else b"200 OK"
                body = b'{"ok": true}'
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            with contextlib.suppress(Exception):
                writer.close()

    def __enter__(self) -> TinyServer:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout=10)


def req(path: str) -> bytes:
    return rawload.request_bytes("GET", path, host=HOST)


def test_a_stall_is_latency_on_the_requests_scheduled_during_it_not_fewer_requests():
    with TinyServer() as server:
        # 40 RPS over 4 connections for 3 s; the server answers nothing from 1.0 s to 2.0 s.
        def stall() -> None:
            time.sleep(1.0)
            server.stall_until = time.monotonic() + 1.0

        threading.Thread(target=stall, daemon=True).start()
        result = rawload.run_open_loop(
            HOST, server.port, [req("/ok")], rate=40, duration=3, connections=4, ramp_rate=1e6
        )

    assert result.planned == 120
    assert result.responses == 120, result.errors
    assert result.error_count == 0
    latencies = sorted(result.latencies([200]))
    # Every request scheduled during the stall waited for its end: ~40 of them (the
    # stall starts ~1 s after the ramp began; the schedule started a little later).
    stalled = [lat for lat in latencies if lat >= 300]
    assert len(stalled) >= 25, latencies
    # and the ones scheduled in the first half second were not held (a lower bound only
    # on the stalled ones above; here just that not everything was slow).
    assert len(stalled) <= 80


def test_statuses_chunked_bodies_timeouts_and_closed_connections_are_counted():
    with TinyServer() as server:
        mixed = rawload.run_open_loop(
            HOST, server.port, [req("/ok"), req("/shed"), req("/chunked")], rate=60, duration=1, connections=3
        )
        hang = rawload.run_open_loop(
            HOST, server.port, [req("/hang")], rate=4, duration=1, connections=2, timeout=0.5, warmup=req("/ok")
        )
        closed = rawload.run_open_loop(
            HOST, server.port, [req("/close")], rate=10, duration=1, connections=2, warmup=req("/ok")
        )

    assert mixed.planned == 60
    assert mixed.error_count == 0, mixed.errors
    assert mixed.status_counts == {"200": 40, "503": 20}
    assert hang.planned == 4
    assert hang.errors == {"timeout": 4}
    assert hang.responses == 0
    assert closed.planned == 10
    assert closed.errors == {"closed": 10}


@pytest.mark.parametrize("processes", [1, 2])
def test_holds_n_concurrent_connections(processes):
    with TinyServer() as server:
        result = rawload.run_open_loop(
            HOST, server.port, [req("/ok")], rate=250, duration=2, connections=500, processes=processes
        )
        peak = server.peak_open
        accepted = server.accepted

    assert result.connected == 500
    assert result.peak_open == 500
    assert peak == 500
    assert accepted == 500  # kept alive: no reconnects
    assert result.reconnects == 0
    assert result.planned == 500
    assert result.responses == 500, result.errors
    assert result.status_counts == {"200": 500}


def test_the_nofile_limit_is_raised_to_the_hard_limit():
    import resource

    soft = rawload.raise_nofile_limit()
    assert soft == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard == resource.RLIM_INFINITY or soft == hard


@pytest.mark.parametrize(("told", "loop"), [("", "uvloop"), ("asyncio", "asyncio")])
def test_the_generator_runs_on_uvloop_unless_told_to_use_asyncio_and_the_result_says_which(monkeypatch, told, loop):
    monkeypatch.setenv("RAWLOAD_LOOP", told)
    with TinyServer() as server:
        result = rawload.run_open_loop(HOST, server.port, [req("/ok")], rate=40, duration=0.5, connections=4)
    assert result.loop == loop
    assert result.status_counts == {"200": 20}
