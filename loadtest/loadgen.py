"""The open-loop load generator (asyncio + httpx), shared by the benchmark and the drill.

- `open_loop`: request i leaves at t0 + i/rate whether or not the earlier ones
  have answered, so a slow server shows up as latency (and a growing backlog),
  not as a politely lower request rate; it runs for `duration` seconds or until
  `stop` is set;
- `closed_loop`: `concurrency` workers, each sending its next request as soon as
  the previous one answered: the throughput ceiling;
- `make_scenario`: the auth hot path's requests (login, refresh with an unused
  refresh token each time, GET /me with a bearer token) over shared `Pools`;
- `timed_request`: one request, its client-side latency, status and the
  server's own time (the `total;dur=` entry of `Server-Timing`), bounded by
  REQUEST_TIMEOUT.

Targets are loopback only (`check_target`): this is a load generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from loadtest import LoadTestError

API = "/api/v1/auth"
REQUEST_TIMEOUT = 5.0  # seconds, every HTTP request, end to end


class TargetError(LoadTestError):
    """Not a target this load generator may send load to."""


# --- targets ----------------------------------------------------------------------------------


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_target(url: str) -> str:
    """The base URL without a trailing slash; refuses anything but http(s) on loopback."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"}:
        raise TargetError(f"--url must be http:// or https://, got {url!r}")
    if not is_loopback_host(parts.hostname):
        raise TargetError(f"refusing to load-test {parts.hostname!r}: only 127.0.0.1 / localhost targets")
    if parts.query or parts.fragment:
        raise TargetError(f"--url must be a base URL without query or fragment, got {url!r}")
    return url.rstrip("/")


# --- statistics -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# --- Server-Timing ----------------------------------------------------------------------------


def parse_server_timing(header: str | None) -> dict[str, float]:
    """`db;dur=0.41;desc="2x", hash;dur=21.7, total;dur=23.9` -> {"db": 0.41, "hash": 21.7, "total": 23.9}."""
    result: dict[str, float] = {}
    if not header:
        return result
    for metric in header.split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        if not name:
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "dur":
                with contextlib.suppress(ValueError):
                    result[name] = float(value.strip().strip('"'))
                break
    return result


# --- load generation --------------------------------------------------------------------------


@dataclass
class Sample:
    latency_ms: float
    status: int  # 0 = no HTTP answer (timeout, connection error, no token)
    server_ms: float | None = None
    server_hash_ms: float | None = None
    error: str | None = None


@dataclass
class BenchUser:
    email: str
    password: str
    access_token: str = ""


@dataclass
class Pools:
    users: list[BenchUser]
    refresh: asyncio.Queue  # (user index, unused refresh token)
    next_login: int = 0
    next_me: int = 0
    token_waits: int = 0  # refresh requests that had to wait for an unused token
    harvested: int = 0


@dataclass
class RunResult:
    samples: list[Sample]
    elapsed_s: float
    planned: int
    capped: bool
    schedule_lag_ms: list[float] = field(default_factory=list)


async def timed_request(
    client: httpx.AsyncClient, method: str, path: str, **kwargs: Any
) -> tuple[Sample, httpx.Response | None]:
    start = time.perf_counter()
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            response = await client.request(method, path, **kwargs)
    except (TimeoutError, httpx.TimeoutException):
        return Sample((time.perf_counter() - start) * 1000, 0, error="timeout"), None
    except httpx.HTTPError as exc:
        return Sample((time.perf_counter() - start) * 1000, 0, error=type(exc).__name__), None
    latency = (time.perf_counter() - start) * 1000
    timing = parse_server_timing(response.headers.get("server-timing"))
    sample = Sample(latency, response.status_code, timing.get("total"), timing.get("hash"))
    if not response.is_success:
        sample.error = error_code(response)
    return sample, response


def error_code(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"http_{response.status_code}"
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return f"http_{response.status_code}"


def json_body(response: httpx.Response | None) -> dict:
    if response is None:
        return {}
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def make_scenario(name: str, client: httpx.AsyncClient, pools: Pools) -> Callable[[], Awaitable[Sample]]:
    users = pools.users

    async def login() -> Sample:
        index = pools.next_login % len(users)
        pools.next_login += 1
        user = users[index]
        sample, response = await timed_request(
            client, "POST", f"{API}/login", json={"email": user.email, "password": user.password}
        )
        token = json_body(response).get("refresh_token") if sample.status == 200 else None
        if isinstance(token, str):
            # A fresh, unused token of a new session: more material for the refresh scenario.
            pools.refresh.put_nowait((index, token))
            pools.harvested += 1
        return sample

    async def refresh() -> Sample:
        if pools.refresh.empty():
            pools.token_waits += 1
        start = time.perf_counter()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                index, token = await pools.refresh.get()
        except TimeoutError:
            return Sample((time.perf_counter() - start) * 1000, 0, error="no_unused_refresh_token")
        sample, response = await timed_request(client, "POST", f"{API}/refresh", json={"refresh_token": token})
        body = json_body(response)
        successor = body.get("refresh_token") if sample.status == 200 else None
        if isinstance(successor, str):
            # Refresh tokens rotate: the used one is dead, its successor takes its place.
            pools.refresh.put_nowait((index, successor))
            if isinstance(body.get("access_token"), str):
                users[index].access_token = body["access_token"]
        # On any failure the token is dropped: it may have been rotated server-side,
        # and presenting it again after the grace window would revoke its session.
        return sample

    async def me() -> Sample:
        user = users[pools.next_me % len(users)]
        pools.next_me += 1
        sample, _ = await timed_request(
            client, "GET", f"{API}/me", headers={"Authorization": f"Bearer {user.access_token}"}
        )
        return sample

    return {"login": login, "refresh": refresh, "me": me}[name]


async def open_loop(
    request: Callable[[], Awaitable[Sample]],
    *,
    rate: float,
    max_requests: int,
    duration: float | None = None,
    stop: asyncio.Event | None = None,
) -> RunResult:
    """Request i starts at t0 + i/rate, whatever happened to the earlier ones.

    It sends round(rate * duration) requests (with `duration`), or until `stop`
    is set; never more than `max_requests`. Then it waits for the answers (each
    bounded by the request's own timeout) and returns them in sending order.
    """
    if duration is None and stop is None:
        raise ValueError("open_loop needs a duration or a stop event")
    wanted = max(1, round(rate * duration)) if duration is not None else max_requests + 1
    planned = min(wanted, max_requests)
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.01
    tasks: list[asyncio.Task[Sample]] = []
    lags: list[float] = []
    try:
        for i in range(planned):
            target = t0 + i / rate
            delay = target - loop.time()
            if delay > 0:
                if stop is None:
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
            if stop is not None and stop.is_set():
                break
            lags.append(max(0.0, (loop.time() - target) * 1000))
            tasks.append(asyncio.create_task(request()))
        samples = list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
    sent = len(tasks)
    # Throughput over the scheduled window at least: one fast request is not "12 RPS".
    elapsed = max(loop.time() - t0, sent / rate)
    capped = sent >= max_requests and wanted > max_requests
    return RunResult(samples, elapsed, planned if stop is None else sent, capped, lags)


async def closed_loop(
    request: Callable[[], Awaitable[Sample]], *, concurrency: int, duration: float, max_requests: int
) -> RunResult:
    """`concurrency` workers, each sending its next request when the previous one answered."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    stop_at = start + duration
    budget = [max_requests]
    samples: list[Sample] = []

    async def worker() -> None:
        while loop.time() < stop_at and budget[0] > 0:
            budget[0] -= 1
            samples.append(await request())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return RunResult(samples, loop.time() - start, len(samples), budget[0] <= 0)
