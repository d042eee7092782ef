"""An open-loop HTTP/1.1 load generator on raw asyncio streams: cheap enough per request
to hold thousands of kept-alive connections at ~1000+ requests a second on a small box.

    result = run_open_loop("127.0.0.1", 8000, [request_bytes("GET", "/health", host=...)],
                           rate=200, duration=10, connections=400)

- Every connection i has its own schedule: it sends request k at
  t0 + offset_i + k * period, with period = connections / rate and the offsets
  spread evenly over one period, so the aggregate rate is `rate`. A connection
  sends its next request once the previous answer is in (no pipelining); the
  latency of a request is measured from its *scheduled* time, so a server that
  stalls shows up as latency on every request scheduled during the stall (the
  queueing counts: no coordinated omission), not as fewer requests.
- Every request ends as a response (status counted, latency recorded per
  status) or as an error: `timeout` (no complete answer within `timeout`
  seconds of its scheduled time; the connection is then dropped and opened
  again), `connect` (the connection could not be (re)opened), `closed` (the
  server closed or reset the connection before answering), `protocol` (an
  answer that is not HTTP/1.x).
- Connections are opened gradually before the measurement (`ramp`: at most
  `ramp_rate` new connections a second), each sending one unmeasured warm-up
  request, so every one of them is an established keep-alive connection when
  the measured schedule starts.
- `processes` > 1 splits the connections among that many worker processes
  (multiprocessing, spawn), each with its own event loop; they share one t0 on
  the system-wide monotonic clock.
- The RLIMIT_NOFILE soft limit is raised to the hard limit.
- The event loop is uvloop's (libuv) when it is installed (requirements-dev.txt),
  else asyncio's own; `RAWLOAD_LOOP=asyncio` forces the latter. The generator
  shares the cores with the server it measures, and uvloop's loop costs it
  less CPU per request; the report says which loop ran (`loop`).

Responses are read by Content-Length, chunked transfer coding, or (HTTP/1.0 or
`Connection: close`) until the server closes; a `Connection: close` answer makes
the connection reopen before its next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
import resource
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from loadtest import LoadTestError

REQUEST_TIMEOUT = 5.0
DEFAULT_RAMP_RATE = 2000.0  # new connections a second, all processes together
MAX_CONNECTIONS = 50_000
READ_LIMIT = 1 << 20


class RawLoadError(LoadTestError):
    """The generator could not run (bad arguments, too few file descriptors)."""


def loop_name() -> str:
    """The event loop the generator runs: "uvloop" when installed (unless RAWLOAD_LOOP=asyncio), else "asyncio"."""
    if os.environ.get("RAWLOAD_LOOP", "").strip().lower() == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def _run(coroutine: Any) -> Any:
    if loop_name() == "uvloop":
        import uvloop

        return uvloop.run(coroutine)
    return asyncio.run(coroutine)


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else target
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def request_bytes(
    method: str,
    path: str,
    *,
    host: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    user_agent: str = "velro-rawload/1",
) -> bytes:
    """One HTTP/1.1 request, ready to write on a kept-alive connection."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"User-Agent: {user_agent}", "Accept: */*"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None or method in {"POST", "PUT", "PATCH"}:
        lines.append(f"Content-Length: {len(body or b'')}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


@dataclass
class RawResult:
    """What one run measured (all processes merged)."""

    rate: float
    duration_s: float
    connections: int
    processes: int
    planned: int = 0
    latencies_ms: dict[int, list[float]] = field(default_factory=dict)  # by status
    errors: Counter = field(default_factory=Counter)
    connected: int = 0  # connections established (and warmed up) when the measurement started
    peak_open: int = 0  # connections open at once, at most (summed over processes)
    reconnects: int = 0
    warmup_errors: Counter = field(default_factory=Counter)
    lag_ms: list[float] = field(default_factory=list)  # generator lateness: sent - max(scheduled, connection free)
    gc_pauses_ms: list[float] = field(default_factory=list)  # the generator's own garbage collections while measuring
    elapsed_s: float = 0.0
    ramp_s: float = 0.0
    loop: str = field(default_factory=loop_name)  # the event loop that ran (loop_name())

    @property
    def responses(self) -> int:
        return sum(len(v) for v in self.latencies_ms.values())

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def status_counts(self) -> dict[str, int]:
        return {str(status): len(values) for status, values in sorted(self.latencies_ms.items())}

    def latencies(self, statuses: Sequence[int] | None = None) -> list[float]:
        values: list[float] = []
        for status, lat in self.latencies_ms.items():
            if statuses is None or status in statuses:
                values.extend(lat)
        return values

    def merge(self, other: dict[str, Any]) -> None:
        self.planned += other["planned"]
        for status, values in other["latencies_ms"].items():
            self.latencies_ms.setdefault(int(status), []).extend(values)
        self.errors.update(other["errors"])
        self.warmup_errors.update(other["warmup_errors"])
        self.connected += other["connected"]
        self.peak_open += other["peak_open"]
        self.reconnects += other["reconnects"]
        self.lag_ms.extend(other["lag_ms"])
        self.gc_pauses_ms.extend(other["gc_pauses_ms"])
        self.ramp_s = max(self.ramp_s, other["ramp_s"])


class ProtocolError(Exception):
    pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; return (status, keep_alive)."""
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1."):
        raise ProtocolError(head[:40])
    try:
        status = int(head[9:12])
    except ValueError:
        raise ProtocolError(head[:40]) from None
    keep_alive = head[5:8] == b"1.1"
    length: int | None = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            token = value.strip().lower()
            if token == b"close":
                keep_alive = False
            elif token == b"keep-alive":
                keep_alive = True
    if status in (204, 304) or 100 <= status < 200:
        return status, keep_alive
    if chunked:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # trailers, up to the empty line
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            await reader.readexactly(size + 2)
    elif length is not None:
        if length:
            await reader.readexactly(length)
    else:
        await reader.read()  # until the server closes
        keep_alive = False
    return status, keep_alive


class _Worker:
    """The connections of one process: ramp, then the measured schedule."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.host: str = config["host"]
        self.port: int = config["port"]
        self.requests: list[bytes] = config["requests"]
        self.warmup: bytes = config["warmup"] or self.requests[0]
        self.indices: list[int] = config["indices"]
        self.total: int = config["connections"]
        self.rate: float = config["rate"]
        self.duration: float = config["duration"]
        self.timeout: float = config["timeout"]
        self.ramp_rate: float = config["ramp_rate"]
        self.period = self.total / self.rate
        self.latencies: dict[int, list[float]] = {}
        self.errors: Counter = Counter()
        self.warmup_errors: Counter = Counter()
        self.lag: list[float] = []
        self.planned = 0
        self.open = 0
        self.peak_open = 0
        self.reconnects = 0
        self.streams: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = {}
        self.gc_pauses: list[float] = []
        self._collection_started = 0.0

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=READ_LIMIT)
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        return reader, writer

    def _close(self, index: int) -> None:
        pair = self.streams.get(index)
        if pair is not None:
            self.open -= 1
            pair[1].transport.abort()
        self.streams[index] = None

    async def _open_and_warm(self, index: int) -> None:
        try:
            self.streams[index] = await asyncio.wait_for(self._connect(), self.timeout)
        except (OSError, TimeoutError):
            self.warmup_errors["connect"] += 1
            self.streams[index] = None
            return
        reader, writer = self.streams[index]
        try:
            writer.write(self.warmup)
            _status, keep_alive = await asyncio.wait_for(read_response(reader), self.timeout)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolError):
            self.warmup_errors["warmup"] += 1
            self._close(index)
            return
        if not keep_alive:
            self._close(index)

    async def ramp(self) -> float:
        start = time.monotonic()
        per_second = max(1.0, self.ramp_rate)
        tasks = []
        for n, index in enumerate(self.indices):
            due = start + n / per_second
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(self._open_and_warm(index)))
        if tasks:
            await asyncio.gather(*tasks)
        return time.monotonic() - start

    async def _connection(self, index: int, t0: float) -> None:
        offset = (index / self.total) * self.period
        end = t0 + self.duration
        n_requests = len(self.requests)
        k = 0
        free_at = t0
        while True:
            scheduled = t0 + offset + k * self.period
            if scheduled >= end:
                break
            request = self.requests[(index + k * self.total) % n_requests]
            k += 1
            self.planned += 1
            now = time.monotonic()
            if scheduled > now:
                await asyncio.sleep(scheduled - now)
                now = time.monotonic()
            deadline = scheduled + self.timeout
            if now >= deadline:
                self.errors["timeout"] += 1
                free_at = now
                continue
            self.lag.append((now - max(scheduled, free_at)) * 1000)
            pair = self.streams.get(index)
            if pair is not None and pair[0].at_eof():  # closed by the server while idle (keep-alive timeout)
                self._close(index)
                pair = None
            if pair is None:
                try:
                    pair = await asyncio.wait_for(self._connect(), deadline - now)
                except TimeoutError:
                    self.errors["timeout"] += 1
                    free_at = time.monotonic()
                    continue
                except OSError:
                    self.errors["connect"] += 1
                    free_at = time.monotonic()
                    continue
                self.streams[index] = pair
                self.reconnects += 1
            reader, writer = pair
            try:
                writer.write(request)
                status, keep_alive = await asyncio.wait_for(read_response(reader), deadline - time.monotonic())
            except TimeoutError:
                self.errors["timeout"] += 1
                self._close(index)
            except (OSError, asyncio.IncompleteReadError):
                self.errors["closed"] += 1
                self._close(index)
            except (ProtocolError, asyncio.LimitOverrunError, ValueError):
                self.errors["protocol"] += 1
                self._close(index)
            else:
                done = time.monotonic()
                self.latencies.setdefault(status, []).append((done - scheduled) * 1000)
                if not keep_alive:
                    self._close(index)
            free_at = time.monotonic()

    @staticmethod
    def freeze_ramp() -> None:
        """After the ramp, before t0: the ramp's connections live to the end.
        Out of the collector's sight, a full collection mid-run does not walk
        them while answers wait to be read (88 ms seen with 5,000 connections:
        the generator's own pause, counted as the server's latency)."""
        gc.collect()
        gc.freeze()

    async def measure(self, t0: float) -> None:
        # Collections that still run are timed and reported (gc_pauses_ms).
        gc.callbacks.append(self._time_collection)
        try:
            await asyncio.gather(*(self._connection(index, t0) for index in self.indices))
        finally:
            gc.callbacks.remove(self._time_collection)
            gc.unfreeze()

    def _time_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._collection_started = time.perf_counter()
        else:
            self.gc_pauses.append((time.perf_counter() - self._collection_started) * 1000)

    def close_all(self) -> None:
        for index in list(self.streams):
            self._close(index)

    def report(self, ramp_s: float, connected: int) -> dict[str, Any]:
        return {
            "planned": self.planned,
            "latencies_ms": self.latencies,
            "errors": dict(self.errors),
            "warmup_errors": dict(self.warmup_errors),
            "connected": connected,
            "peak_open": self.peak_open,
            "reconnects": self.reconnects,
            "lag_ms": self.lag,
            "gc_pauses_ms": self.gc_pauses,
            "ramp_s": ramp_s,
        }


async def _run_in_process(config: dict[str, Any], start_at: float | None = None) -> dict[str, Any]:
    worker = _Worker(config)
    ramp_s = await worker.ramp()
    connected = sum(1 for pair in worker.streams.values() if pair is not None)
    worker.freeze_ramp()
    t0 = max(time.monotonic() + 0.05, start_at or 0.0)
    try:
        await worker.measure(t0)
    finally:
        worker.close_all()
    return worker.report(ramp_s, connected)


def _process_main(pipe: Any, config: dict[str, Any]) -> None:
    """A worker process: ramp, say how many connections are up, wait for t0, measure, report."""
    raise_nofile_limit()

    async def main() -> dict[str, Any]:
        worker = _Worker(config)
        ramp_s = await worker.ramp()
        connected = sum(1 for pair in worker.streams.values() if pair is not None)
        worker.freeze_ramp()
        pipe.send(("ready", connected))
        loop = asyncio.get_running_loop()
        t0 = await loop.run_in_executor(None, pipe.recv)
        try:
            await worker.measure(t0)
        finally:
            worker.close_all()
        return worker.report(ramp_s, connected)

    try:
        pipe.send(("result", _run(main())))
    except BaseException as exc:  # the parent must hear about it, not wait forever
        with contextlib.suppress(Exception):
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


def run_open_loop(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    rate: float,
    duration: float,
    connections: int,
    timeout: float = REQUEST_TIMEOUT,
    processes: int = 1,
    warmup: bytes | None = None,
    ramp_rate: float = DEFAULT_RAMP_RATE,
) -> RawResult:
    """Run the open-loop schedule against host:port; blocking. See the module docstring."""
    if not requests:
        raise RawLoadError("at least one request")
    if rate <= 0 or duration <= 0 or timeout <= 0:
        raise RawLoadError("rate, duration and timeout must be > 0")
    if not 1 <= connections <= MAX_CONNECTIONS:
        raise RawLoadError(f"connections {connections} out of range [1, {MAX_CONNECTIONS}]")
    processes = max(1, min(int(processes), connections))
    limit = raise_nofile_limit()
    if connections // processes + 64 > limit:
        raise RawLoadError(f"{connections} connections in {processes} processes: RLIMIT_NOFILE is only {limit}")
    base = {
        "host": host,
        "port": port,
        "requests": list(requests),
        "warmup": warmup,
        "connections": connections,
        "rate": float(rate),
        "duration": float(duration),
        "timeout": float(timeout),
        "ramp_rate": float(ramp_rate) / processes,
    }
    result = RawResult(rate=float(rate), duration_s=float(duration), connections=connections, processes=processes)
    started = time.monotonic()
    if processes == 1:
        report = _run(_run_in_process({**base, "indices": list(range(connections))}))
        result.merge(report)
        result.elapsed_s = time.monotonic() - started
        return result

    ctx = multiprocessing.get_context("spawn")
    procs = []
    pipes = []
    try:
        for w in range(processes):
            parent_end, child_end = ctx.Pipe()
            config = {**base, "indices": list(range(w, connections, processes))}
            proc = ctx.Process(target=_process_main, args=(child_end, config), daemon=True)
            proc.start()
            child_end.close()
            procs.append(proc)
            pipes.append(parent_end)
        ramp_budget = 60.0 + connections / max(1.0, ramp_rate) + timeout
        for pipe in pipes:
            if not pipe.poll(ramp_budget):
                raise RawLoadError(f"a generator process did not finish its ramp within {ramp_budget:.0f} s")
            kind, value = pipe.recv()
            if kind == "error":
                raise RawLoadError(f"generator process failed: {value}")
        t0 = time.monotonic() + 0.2
        for pipe in pipes:
            pipe.send(t0)
        for pipe in pipes:
            if not pipe.poll(duration + timeout + 60):
                raise RawLoadError("a generator process did not report its results")
            kind, value = pipe.recv()
            if kind == "error":
                raise RawLoadError(f"generator process failed: {value}")
            result.merge(value)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for pipe in pipes:
            pipe.close()
    result.elapsed_s = time.monotonic() - started
    return result
