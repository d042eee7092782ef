"""Velro perf benchmark: the auth hot path (login, refresh, /me) over HTTP.

    .venv/bin/python -m loadtest.benchmark --duration 5                    # starts gunicorn itself, then measures
    .venv/bin/python -m loadtest.benchmark --url http://127.0.0.1:8000     # a server already running

The load generator is loadtest.loadgen (asyncio + httpx). For every scenario
(login, refresh, me) it runs:

- open-loop runs at fixed rates (`--rates`, default 1,5,10,50 RPS): request i is
  sent at t0 + i/rate whether or not the earlier ones have answered, so a slow
  server shows up as latency (and a growing backlog), not as a politely lower
  request rate;
- one saturation run: a closed loop of `--concurrency` workers, each sending its
  next request as soon as the previous one answered: the throughput ceiling.

Per request it records the client-side latency, the status and the server's
own time (the `total;dur=` entry of the `Server-Timing` header, when present).
In the same run it measures the argon2id verify time locally (the parameters
of accounts.hashers.Argon2idPasswordHasher): the physical floor of a password
login, reported as the ratio login p50 / floor. The floor is the median of
`--floor-samples` verifies, taken before and again after the load runs; the
lower of the two medians counts (noise from other work on the box only adds
time, and one unlucky moment must not halve every ratio).

Output: a table on stdout, a JSON file (`--out`, default
var/bench/perf_benchmark.json) and a PNG chart next to it.

Without `--url` it starts the web tier with loadtest.stack (gunicorn with
gunicorn.conf.py on a free loopback port, RATELIMIT_ENABLE=false, database
`velro_bench` created if missing and migrated, Redis 127.0.0.1:6379/0) and stops
it at the end, also on Ctrl-C. No Celery worker is started: the welcome-email
tasks signup enqueues wait in the broker. Targets are loopback only: any other
host is refused.

The server needs RATELIMIT_ENABLE=false (this is a load test from one IP): with
the limits on, most requests of the faster runs are answered 429.

Everything is bounded: at most `--max-requests` requests per run, a 5 s timeout
on every request, `--duration` <= 300 s, and an overall `--deadline`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import re
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from loadtest import BASE_DIR, LoadTestError
from loadtest.loadgen import (
    API,
    REQUEST_TIMEOUT,
    BenchUser,
    Pools,
    RunResult,
    check_target,
    closed_loop,
    json_body,
    make_scenario,
    open_loop,
    percentile,
    rounded,
    timed_request,
)
from loadtest.machine import loadavg, machine_info
from loadtest.stack import Stack, redact

SCENARIOS = ("login", "refresh", "me")
DEFAULT_RATES = (1.0, 5.0, 10.0, 50.0)
DEFAULT_DURATION = 10.0
DEFAULT_CONCURRENCY = 16
DEFAULT_USERS = 16
DEFAULT_MAX_REQUESTS = 5000
DEFAULT_DEADLINE = 900.0
DEFAULT_FLOOR_SAMPLES = 30

# Upper bounds on what the command line may ask for.
MAX_DURATION = 300.0
MAX_RATE = 2000.0
MAX_CONCURRENCY = 256
MAX_USERS = 500
MAX_REQUESTS_CAP = 100_000
MAX_DEADLINE = 3600.0
MAX_FLOOR_SAMPLES = 200
SETTLE_TIMEOUT = 10.0  # seconds, at most, between runs for the server to drain its backlog
SETTLE_HEALTH_MS = 50.0

# argon2id at the OWASP minimum, as accounts.hashers.Argon2idPasswordHasher.
ARGON2_TIME_COST = 2
ARGON2_MEMORY_COST_KIB = 19456
ARGON2_PARALLELISM = 1

DEFAULT_DATABASE_URL = "postgres://root@127.0.0.1:5432/velro_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_OUT = BASE_DIR / "var" / "bench" / "perf_benchmark.json"

USER_AGENT = "velro-perf-benchmark/1"


class BenchmarkError(LoadTestError):
    """The benchmark cannot run (bad arguments, server not reachable, setup refused)."""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- the argon2id floor -----------------------------------------------------------------------


def measure_argon2_floor(samples: int = DEFAULT_FLOOR_SAMPLES) -> dict[str, Any]:
    """Median time of one argon2id verify (m=19456 KiB, t=2, p=1) in this process."""
    from argon2 import PasswordHasher

    samples = max(1, min(int(samples), MAX_FLOOR_SAMPLES))
    hasher = PasswordHasher(
        time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_COST_KIB, parallelism=ARGON2_PARALLELISM
    )
    password = secrets.token_urlsafe(16)
    encoded = hasher.hash(password)
    hasher.verify(encoded, password)  # loads the library, touches the memory once
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        hasher.verify(encoded, password)
        times.append((time.perf_counter() - start) * 1000)
    return {
        "algorithm": "argon2id",
        "time_cost": ARGON2_TIME_COST,
        "memory_cost_kib": ARGON2_MEMORY_COST_KIB,
        "parallelism": ARGON2_PARALLELISM,
        "samples": samples,
        "median_ms": rounded(percentile(times, 50), 3),
        "min_ms": rounded(min(times), 3),
        "p95_ms": rounded(percentile(times, 95), 3),
        "max_ms": rounded(max(times), 3),
    }


def combine_floors(before: dict[str, Any], after: dict[str, Any] | None) -> dict[str, Any]:
    """The floor: the measurement with the lower median; both kept for the record."""
    chosen = before if after is None or before["median_ms"] <= after["median_ms"] else after
    return {
        **chosen,
        "chosen": "before" if chosen is before else "after",
        "before": before,
        "after": after,
        "method": "median of `samples` local verifies, measured before and after the load runs; the lower median",
    }


def summarize(scenario: str, mode: str, rate: float | None, result: RunResult, token_waits: int) -> dict[str, Any]:
    samples = result.samples
    latencies = [s.latency_ms for s in samples]
    ok = [s for s in samples if 200 <= s.status < 300]
    server = [s.server_ms for s in samples if s.server_ms is not None]
    server_hash = [s.server_hash_ms for s in samples if s.server_hash_ms is not None]
    p50 = percentile(latencies, 50)
    statuses = Counter(str(s.status) for s in samples)
    errors = Counter(s.error for s in samples if s.error)
    return {
        "scenario": scenario,
        "mode": mode,
        "rate": rate,
        "label": "sat" if mode == "saturation" else _fmt_rate(rate),
        "concurrency": None,
        "requests": len(samples),
        "planned": result.planned,
        "capped": result.capped,
        "ok": len(ok),
        "success_rate": round(len(ok) / len(samples), 4) if samples else 0.0,
        "elapsed_s": round(result.elapsed_s, 3),
        "achieved_rps": round(len(ok) / result.elapsed_s, 2) if result.elapsed_s > 0 else 0.0,
        "p50_ms": rounded(p50),
        "p95_ms": rounded(percentile(latencies, 95)),
        "p99_ms": rounded(percentile(latencies, 99)),
        "max_ms": rounded(max(latencies) if latencies else None),
        "mean_ms": rounded(sum(latencies) / len(latencies) if latencies else None),
        "server_p50_ms": rounded(percentile(server, 50)),
        "server_p95_ms": rounded(percentile(server, 95)),
        "server_hash_p50_ms": rounded(percentile(server_hash, 50)),
        "server_timing_fraction": round(len(server) / len(samples), 4) if samples else 0.0,
        "login_p50_floor_ratio": None,  # set once the floor is known (run_benchmark)
        "status_counts": dict(sorted(statuses.items())),
        "errors": dict(sorted(errors.items())),
        "schedule_lag_p99_ms": rounded(percentile(result.schedule_lag_ms, 99)),
        "token_waits": token_waits if scenario == "refresh" else None,
    }


def _fmt_rate(rate: float | None) -> str:
    if rate is None:
        return "-"
    return str(int(rate)) if float(rate).is_integer() else f"{rate:g}"


# --- setup ------------------------------------------------------------------------------------


async def setup_users(client: httpx.AsyncClient, *, users: int, concurrency: int) -> Pools:
    """Sign up `users` users, log each in (enough sessions for `concurrency` refreshers)."""
    run_id = secrets.token_hex(4)
    accounts = [
        BenchUser(email=f"bench-{run_id}-{i}@example.com", password=f"Bench-{secrets.token_urlsafe(18)}")
        for i in range(users)
    ]
    refresh: asyncio.Queue = asyncio.Queue()
    gate = asyncio.Semaphore(4)  # signup and login hash: no point in more in flight

    async def call(path: str, body: dict) -> dict:
        async with gate:
            sample, response = await timed_request(client, "POST", path, json=body)
        if sample.status == 429:
            raise BenchmarkError(
                f"POST {path} answered 429 rate_limited: start the server with RATELIMIT_ENABLE=false "
                "(a loopback load test sends everything from one IP)"
            )
        if not 200 <= sample.status < 300:
            detail = sample.error or ""
            if response is not None:
                detail = f"{detail} {response.text[:300]}"
            raise BenchmarkError(f"setup: POST {path} failed with status {sample.status}: {detail.strip()}")
        return json_body(response)

    async def signup(index: int) -> None:
        user = accounts[index]
        body = await call(f"{API}/signup", {"email": user.email, "password": user.password})
        refresh.put_nowait((index, body["refresh_token"]))
        user.access_token = body["access_token"]

    await asyncio.gather(*(signup(i) for i in range(users)))
    logins_each = max(1, math.ceil(concurrency / users))

    async def login(index: int) -> None:
        user = accounts[index]
        body = await call(f"{API}/login", {"email": user.email, "password": user.password})
        refresh.put_nowait((index, body["refresh_token"]))
        user.access_token = body["access_token"]

    await asyncio.gather(*(login(i) for i in range(users) for _ in range(logins_each)))
    return Pools(accounts, refresh)


# --- the benchmark ----------------------------------------------------------------------------


def _validate(rates: Sequence[float], duration: float, concurrency: int, users: int, max_requests: int) -> None:
    if not rates:
        raise BenchmarkError("at least one rate is needed")
    for rate in rates:
        if not 0 < rate <= MAX_RATE:
            raise BenchmarkError(f"rate {rate} out of range (0, {MAX_RATE:g}]")
    if not 0 < duration <= MAX_DURATION:
        raise BenchmarkError(f"duration {duration} out of range (0, {MAX_DURATION:g}] s")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise BenchmarkError(f"concurrency {concurrency} out of range [1, {MAX_CONCURRENCY}]")
    if not 1 <= users <= MAX_USERS:
        raise BenchmarkError(f"users {users} out of range [1, {MAX_USERS}]")
    if not 1 <= max_requests <= MAX_REQUESTS_CAP:
        raise BenchmarkError(f"max requests {max_requests} out of range [1, {MAX_REQUESTS_CAP}]")


def _probe_health(url: str) -> None:
    try:
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT, trust_env=False) as client:
            status = client.get("/health").status_code
    except httpx.HTTPError as exc:
        raise BenchmarkError(f"GET {url}/health: {type(exc).__name__}; is the server up?") from None
    if status != 200:
        raise BenchmarkError(f"GET {url}/health: status {status}")


async def settle(client: httpx.AsyncClient) -> float:
    """Between runs: wait (bounded) until GET /health is quick again, so the backlog of an
    overloaded run (requests the client gave up on still being served) does not leak into
    the next run. Returns the seconds waited."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    quick = 0
    while loop.time() - start < SETTLE_TIMEOUT and quick < 3:
        sample, _ = await timed_request(client, "GET", "/health")
        quick = quick + 1 if sample.status == 200 and sample.latency_ms < SETTLE_HEALTH_MS else 0
        await asyncio.sleep(0.05)
    return loop.time() - start


async def _get_json(client: httpx.AsyncClient, path: str) -> dict | None:
    sample, response = await timed_request(client, "GET", path)
    return json_body(response) if sample.status == 200 else None


async def _benchmark(
    url: str,
    *,
    rates: Sequence[float],
    duration: float,
    concurrency: int,
    users: int,
    max_requests: int,
    scenarios: Sequence[str],
    deadline_at: float,
    rows: list[dict[str, Any]],
    notes: list[str],
) -> dict | None:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=4.0)
    timeout = httpx.Timeout(REQUEST_TIMEOUT)
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    # trust_env=False: no proxy from the environment may sit between us and loopback.
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=timeout, headers=headers, trust_env=False
    ) as client:
        sample, _ = await timed_request(client, "GET", "/health")
        if sample.status != 200:
            raise BenchmarkError(f"GET {url}/health: status {sample.status} ({sample.error}); is the server up?")
        version = await _get_json(client, "/__version")
        log(f"setup: signing up {users} users and logging them in")
        pools = await setup_users(client, users=users, concurrency=concurrency)
        log(f"setup: {len(pools.users)} users, {pools.refresh.qsize()} unused refresh tokens")
        warmup = min(50, 2 * concurrency)
        for scenario in scenarios:
            request = make_scenario(scenario, client, pools)
            # Unmeasured warm-up: connections opened, worker caches filled.
            await closed_loop(request, concurrency=concurrency, duration=duration, max_requests=warmup)
            plan: list[tuple[str, float | None]] = [("open", float(rate)) for rate in rates]
            plan.append(("saturation", None))
            for mode, rate in plan:
                label = "sat" if rate is None else _fmt_rate(rate)
                if time.monotonic() + duration + REQUEST_TIMEOUT + 5 > deadline_at:
                    notes.append(f"deadline: skipped {scenario} @ {label} and everything after it")
                    log(notes[-1])
                    return version
                waited = await settle(client)
                if waited > 2:
                    log(f"waited {waited:.1f} s for the server to drain before {scenario} @ {label}")
                waits_before = pools.token_waits
                if rate is None:
                    result = await closed_loop(
                        request, concurrency=concurrency, duration=duration, max_requests=max_requests
                    )
                else:
                    result = await open_loop(request, rate=rate, max_requests=max_requests, duration=duration)
                row = summarize(scenario, mode, rate, result, pools.token_waits - waits_before)
                if rate is None:
                    row["concurrency"] = concurrency
                rows.append(row)
                log(
                    f"{scenario:8} {label:>5}: {row['requests']} requests, {row['success_rate'] * 100:.1f}% ok, "
                    f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms"
                )
                if row["status_counts"].get("429"):
                    notes.append(f"{scenario} @ {label}: 429 rate_limited answers: is RATELIMIT_ENABLE=false?")
                    log(notes[-1])
        return version


def run_benchmark(
    url: str,
    *,
    rates: Sequence[float] = DEFAULT_RATES,
    duration: float = DEFAULT_DURATION,
    concurrency: int = DEFAULT_CONCURRENCY,
    users: int = DEFAULT_USERS,
    out_dir: str | os.PathLike[str] = BASE_DIR / "var" / "bench",
    max_requests: int = DEFAULT_MAX_REQUESTS,
    scenarios: Sequence[str] = SCENARIOS,
    floor_samples: int = DEFAULT_FLOOR_SAMPLES,
    deadline: float = DEFAULT_DEADLINE,
    name: str = "perf_benchmark",
    target_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Benchmark the server at `url` (loopback only); write <name>.json and <name>.png to
    `out_dir`; return the result (what the JSON file holds)."""
    url = check_target(url)
    rates = [float(rate) for rate in rates]
    _validate(rates, duration, concurrency, users, max_requests)
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown or not scenarios:
        raise BenchmarkError(f"scenarios must be among {', '.join(SCENARIOS)}; got {list(scenarios)}")
    if not 0 < deadline <= MAX_DEADLINE:
        raise BenchmarkError(f"deadline {deadline} out of range (0, {MAX_DEADLINE:g}] s")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise BenchmarkError(f"bad output name {name!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _probe_health(url)
    started = time.monotonic()
    started_at = datetime.now(UTC)
    load_start = loadavg()

    log(f"argon2id floor: {floor_samples} local verifies (m={ARGON2_MEMORY_COST_KIB} KiB, t={ARGON2_TIME_COST})")
    floor_before = measure_argon2_floor(floor_samples)
    log(f"argon2id floor, before the runs: median {floor_before['median_ms']} ms")

    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    version: dict | None = None
    complete = False
    # httpx logs every request at INFO: a flood under any app logging config.
    httpx_logger = logging.getLogger("httpx")
    httpx_level = httpx_logger.level
    httpx_logger.setLevel(logging.WARNING)
    try:
        version = asyncio.run(
            asyncio.wait_for(
                _benchmark(
                    url,
                    rates=rates,
                    duration=duration,
                    concurrency=concurrency,
                    users=users,
                    max_requests=max_requests,
                    scenarios=list(scenarios),
                    deadline_at=started + deadline,
                    rows=rows,
                    notes=notes,
                ),
                timeout=max(1.0, deadline - (time.monotonic() - started)),
            )
        )
        complete = len(rows) == len(scenarios) * (len(rates) + 1)
    except TimeoutError:
        notes.append(f"overall deadline of {deadline:g} s reached: results are partial")
        log(notes[-1])
    finally:
        httpx_logger.setLevel(httpx_level)

    floor_after = measure_argon2_floor(floor_samples)
    log(f"argon2id floor, after the runs: median {floor_after['median_ms']} ms")
    floor = combine_floors(floor_before, floor_after)
    for row in rows:
        if row["scenario"] == "login" and row["p50_ms"] and floor["median_ms"]:
            row["login_p50_floor_ratio"] = rounded(row["p50_ms"] / floor["median_ms"])

    result: dict[str, Any] = {
        "schema": 1,
        "tool": "loadtest.benchmark",
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(time.monotonic() - started, 1),
        "complete": complete,
        "target": {"url": url, "version": version, **(target_info or {})},
        "machine": machine_info(),
        "load_average": {"start": load_start, "end": loadavg()},
        "config": {
            "scenarios": list(scenarios),
            "rates": rates,
            "duration_s": duration,
            "concurrency": concurrency,
            "users": users,
            "max_requests_per_run": max_requests,
            "request_timeout_s": REQUEST_TIMEOUT,
            "deadline_s": deadline,
            "load_generator": f"asyncio + httpx {httpx.__version__}, same machine",
        },
        "floor": floor,
        "rows": rows,
        "notes": notes,
    }
    json_path = out / f"{name}.json"
    png_path = out / f"{name}.png"
    result["files"] = {"json": str(json_path), "png": str(png_path)}
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_chart(result, png_path)
    return result


# --- output -----------------------------------------------------------------------------------


def _cell(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(result: dict[str, Any]) -> str:
    header = [
        "scenario",
        "rate",
        "requests",
        "success %",
        "RPS",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "server p50",
        "login p50/floor",
    ]
    lines = [header]
    for row in result["rows"]:
        lines.append(
            [
                row["scenario"],
                row["label"] if row["mode"] == "open" else f"sat (c={row['concurrency']})",
                str(row["requests"]),
                f"{row['success_rate'] * 100:.1f}",
                f"{row['achieved_rps']:.1f}",
                _cell(row["p50_ms"]),
                _cell(row["p95_ms"]),
                _cell(row["p99_ms"]),
                _cell(row["max_ms"]),
                _cell(row["server_p50_ms"]),
                "-" if row["login_p50_floor_ratio"] is None else f"{row['login_p50_floor_ratio']:.2f}x",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rendered = []
    for n, line in enumerate(lines):
        cells = [cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(line)]
        rendered.append("| " + " | ".join(cells) + " |")
        if n == 0:
            rendered.append("|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|")
    return "\n".join(rendered)


def format_summary(result: dict[str, Any]) -> str:
    machine = result["machine"]
    floor = result["floor"]
    load = result["load_average"]
    lines = [
        f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), {machine['ram_gib']} GiB RAM, "
        f"Python {machine['python']}; load average {load['start']} -> {load['end']}",
        f"argon2id floor (m={floor['memory_cost_kib']} KiB, t={floor['time_cost']}, p={floor['parallelism']}): "
        f"median {floor['median_ms']} ms over {floor['samples']} local verifies "
        f"(before the runs {floor['before']['median_ms']} ms, after {floor['after']['median_ms']} ms: lower counts)",
        f"config: duration {result['config']['duration_s']:g} s per run, saturation concurrency "
        f"{result['config']['concurrency']}, {result['config']['users']} users",
    ]
    lines.extend(f"note: {note}" for note in result["notes"])
    return "\n".join(lines)


def write_chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    scenarios = result["config"]["scenarios"]
    fig, axes = plt.subplots(1, len(scenarios), figsize=(5 * len(scenarios), 4.5), squeeze=False)
    floor_ms = result["floor"].get("median_ms")
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        rows = [row for row in result["rows"] if row["scenario"] == scenario]
        labels = [row["label"] if row["mode"] == "open" else f"sat\nc={row['concurrency']}" for row in rows]
        xs = list(range(len(rows)))
        for key, style in (("p50_ms", "o-"), ("p95_ms", "s--"), ("p99_ms", "^:")):
            ys = [row[key] if row[key] else float("nan") for row in rows]
            ax.plot(xs, ys, style, label=key.removesuffix("_ms"))
        server = [row["server_p50_ms"] or float("nan") for row in rows]
        if any(value == value for value in server):  # any not NaN: the server sent Server-Timing
            ax.plot(xs, server, "x-", color="grey", linewidth=1, label="server p50 (Server-Timing)")
        if scenario == "login" and floor_ms:
            ax.axhline(floor_ms, color="black", linestyle="-.", linewidth=1, label=f"argon2id floor {floor_ms:.1f} ms")
        ax.set_yscale("log")
        ax.set_xticks(xs, labels)
        ax.set_xlabel("offered rate (RPS) / saturation")
        ax.set_ylabel("latency (ms, client side)")
        ax.set_title(scenario)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    machine = result["machine"]
    fig.suptitle(
        f"Velro auth latency: {machine['nproc']} CPUs, {machine['cpu_model']} ({result['started_at']})",
        fontsize="medium",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- command line -----------------------------------------------------------------------------


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rates: expected numbers like 1,5,10,50, got {text!r}") from None
    if not rates:
        raise argparse.ArgumentTypeError("--rates: at least one rate")
    return rates


def _scenarios(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    bad = [name for name in names if name not in SCENARIOS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"--scenarios: choose among {','.join(SCENARIOS)}")
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.benchmark",
        description="Benchmark Velro's auth hot path (login, refresh, /me) over HTTP.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="a running server (loopback only), e.g. http://127.0.0.1:8000")
    target.add_argument(
        "--start", action="store_true", help="start gunicorn on a free port (the default when --url is not given)"
    )
    parser.add_argument("--rates", type=_rates, default=list(DEFAULT_RATES), help="open-loop rates, RPS")
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION, help="seconds per run")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="saturation run workers")
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help="benchmark users signed up")
    parser.add_argument("--max-requests", type=int, default=DEFAULT_MAX_REQUESTS, help="cap per run")
    parser.add_argument("--scenarios", type=_scenarios, default=list(SCENARIOS), help="comma-separated")
    parser.add_argument("--floor-samples", type=int, default=DEFAULT_FLOOR_SAMPLES, help="local argon2id verifies")
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE, help="overall limit, seconds")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output (PNG beside)")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help="with --start")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="with --start")
    parser.add_argument("--broker-url", default=None, help="with --start; default: the settings' (REDIS_URL)")
    return parser.parse_args(argv)


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def start_stack(args: argparse.Namespace, run_dir: Path) -> Stack:
    """gunicorn on a free loopback port against --database-url (created if missing, migrated), --redis-url."""
    return Stack(run_dir=run_dir, database_url=args.database_url, redis_url=args.redis_url, broker_url=args.broker_url)


def stack_info(stack: Stack) -> dict[str, Any]:
    text = stack.web.current_log()
    threads = os.environ.get("GUNICORN_THREADS") or "2 (gunicorn.conf.py default)"
    return {
        "started_by_benchmark": True,
        "server": "gunicorn -c gunicorn.conf.py velro.wsgi:application",
        "workers": text.count("Booting worker with pid"),
        "threads_per_worker": threads,
        "database_url": redact(stack.db.url),
        "redis_url": redact(stack.env.get("REDIS_URL", "")),
        "ratelimit_enable": False,
        "log": str(stack.web.log_path),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    if out.suffix != ".json":
        print("--out must name a .json file", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    kwargs: dict[str, Any] = {
        "rates": args.rates,
        "duration": args.duration,
        "concurrency": args.concurrency,
        "users": args.users,
        "out_dir": out.parent,
        "max_requests": args.max_requests,
        "scenarios": args.scenarios,
        "floor_samples": args.floor_samples,
        "deadline": args.deadline,
        "name": out.stem,
    }
    try:
        if args.url:
            result = run_benchmark(args.url, target_info={"started_by_benchmark": False}, **kwargs)
        else:
            _validate(args.rates, args.duration, args.concurrency, args.users, args.max_requests)
            log("starting gunicorn (RATELIMIT_ENABLE=false)")
            with start_stack(args, out.parent) as stack:
                result = run_benchmark(stack.web.url, target_info=stack_info(stack), **kwargs)
    except LoadTestError as exc:
        print(f"perf_benchmark: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("perf_benchmark: interrupted", file=sys.stderr)
        return 130
    print(format_table(result))
    print()
    print(format_summary(result))
    print(f"JSON: {result['files']['json']}\nPNG:  {result['files']['png']}")
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
