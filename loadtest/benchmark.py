"""Velro perf benchmark: the auth hot path against a stock peer and the argon2id floor, in one run.

    .venv/bin/python -m loadtest.benchmark                          # everything, ~5 minutes
    .venv/bin/python -m loadtest.benchmark --scenarios login,me --no-peer --duration 5

It starts Velro (loadtest.stack: gunicorn with gunicorn.conf.py on a free loopback
port, RATELIMIT_ENABLE=false, database `velro_bench`, Redis 127.0.0.1:6379/0) and
the stock peer (loadtest.peerstack: Django + DRF + simplejwt under
`gunicorn -w 2`, own venv var/peer-venv, database `velro_bench_peer`), signs up
the same benchmark users on both, and measures (scenarios, `--scenarios`):

- `login`, `me`, `health`: closed-loop saturation with wrk (same wrk settings for
  both servers): POST login round-robin over the users, GET /me with a bearer
  token, GET /health (Velro only: the peer has none). Throughput counts 2xx only.
- `openloop`: open-loop login at a low rate (`--low-rate`; its p50 over the
  argon2id floor is a target) and at 25/50/75/100 % of Velro's measured login
  saturation (or `--rates`), the same offered rates for both: latency vs load.
- `overload`: open-loop login at 3x Velro's login saturation for
  `--overload-duration` s: Velro sheds with 503 `overloaded`; the shed answers'
  p50 and the served (200) answers' p99 are targets.
- `mfa` (only when named: not in the default run): the latency of a TOTP
  verify, Velro only (loadtest.mfa): `--mfa-users` users each enroll and verify
  a TOTP factor, then each once: password sign-in, challenge, verify with a
  fresh code, GET /me at aal2, sign-in again and a recovery code; p50/p90/p99
  of each request kind. Skipped with a note when the TOTP routes answer 404.
- `many`: 10,000 concurrent kept-alive connections through nginx
  (deploy/nginx/velro.conf + nginx.conf's worker settings, loadtest.proxy) to
  Velro's gunicorn, open loop at half of Velro's measured /me saturation in
  aggregate: errors and p99 are targets.

Open-loop runs use loadtest.rawload (raw asyncio streams, latency from each
request's scheduled send time, several worker processes for the many-clients
run). The argon2id floor is the median local verify (the parameters of
accounts.hashers.Argon2idPasswordHasher) measured in this process before and
after the runs, with each library that can verify the hash (argon2-cffi, which
stock Django uses, and libsodium, which Velro's hasher uses); the lowest
median counts, so the floor is the fastest verify this machine can do.

Output: a figures table (figure | Velro | peer | vs peer | vs floor | target |
pass) and a runs table on stdout, a JSON file (`--out`, default
var/bench/perf_benchmark.json) and a PNG chart beside it. Exit status 0 when
every selected run completed (targets missed are reported, not an error).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from loadtest import BASE_DIR, LoadTestError
from loadtest.loadgen import check_target, percentile, rounded
from loadtest.machine import cpu_times, loadavg, machine_info, steal_pct
from loadtest.mfa import MfaUnavailable, run_mfa
from loadtest.rawload import RawResult, raise_nofile_limit, request_bytes, run_open_loop
from loadtest.stack import Stack, redact
from loadtest.wrk import run_wrk, wrk_version

SCENARIOS = ("login", "me", "health", "openloop", "overload", "many", "mfa")
DEFAULT_SCENARIOS = ("login", "me", "health", "openloop", "overload", "many")  # mfa: on request
DEFAULT_MFA_USERS = 200
DEFAULT_MFA_CONCURRENCY = 4
DEFAULT_DURATION = 10.0  # wrk saturation runs
DEFAULT_WARMUP = 2.0
DEFAULT_OPEN_DURATION = 8.0
DEFAULT_LOW_RATE = 4.0
DEFAULT_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
DEFAULT_OVERLOAD_FACTOR = 3.0
DEFAULT_OVERLOAD_DURATION = 10.0
DEFAULT_MANY_CONNECTIONS = 10_000
DEFAULT_MANY_DURATION = 15.0
DEFAULT_MANY_PROCESSES = 2
DEFAULT_MANY_RAMP_RATE = 1000.0
DEFAULT_USERS = 16
DEFAULT_LOGIN_CONNECTIONS = 8
DEFAULT_ME_CONNECTIONS = 32
DEFAULT_WRK_THREADS = 2
DEFAULT_FLOOR_SAMPLES = 30
DEFAULT_DEADLINE = 900.0
REQUEST_TIMEOUT = 5.0
FALLBACK_LOGIN_SAT = 40.0  # open-loop rates when the login saturation was not measured
FALLBACK_ME_SAT = 1000.0

MAX_DURATION = 300.0
MAX_RATE = 20_000.0
MAX_USERS = 500
MAX_DEADLINE = 3600.0
MAX_FLOOR_SAMPLES = 200
SETTLE_TIMEOUT = 15.0
SETTLE_QUICK_MS = 50.0

# Targets (issue 13).
TARGET_FLOOR_RATIO = 1.10
TARGET_LOGIN_VS_PEER = 1.0
TARGET_ME_VS_PEER = 1.5
TARGET_SHED_P50_MS = 100.0
TARGET_SERVED_P99_MS = 2000.0
TARGET_MANY_P99_MS = 100.0
# A run that lost this much of the machine's CPU time to other guests of the
# host (steal) measured a smaller machine than the run it is compared with.
STEAL_WARN_PCT = 5.0

# argon2id at the OWASP minimum, as accounts.hashers.Argon2idPasswordHasher.
ARGON2_TIME_COST = 2
ARGON2_MEMORY_COST_KIB = 19456
ARGON2_PARALLELISM = 1

DEFAULT_DATABASE_URL = "postgres://root@127.0.0.1:5432/velro_bench"
DEFAULT_PEER_DATABASE_URL = "postgres://root@127.0.0.1:5432/velro_bench_peer"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_OUT = BASE_DIR / "var" / "bench" / "perf_benchmark.json"
USER_AGENT = "velro-perf-benchmark/2"
API = "/api/v1/auth"


class BenchmarkError(LoadTestError):
    """The benchmark cannot run (bad arguments, server not reachable, setup refused)."""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- the argon2id floor -----------------------------------------------------------------------


FLOOR_LIBRARIES = ("argon2-cffi", "libsodium")


def measure_argon2_floor(samples: int = DEFAULT_FLOOR_SAMPLES, library: str = "argon2-cffi") -> dict[str, Any]:
    """Median time of one argon2id verify (m=19456 KiB, t=2, p=1) in this process,
    of a hash made by argon2-cffi (as every stored hash is), verified by `library`."""
    from argon2 import PasswordHasher
    from nacl.bindings import crypto_pwhash_str_verify

    samples = max(1, min(int(samples), MAX_FLOOR_SAMPLES))
    hasher = PasswordHasher(
        time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_COST_KIB, parallelism=ARGON2_PARALLELISM
    )
    password = secrets.token_urlsafe(16)
    encoded = hasher.hash(password)
    if library == "argon2-cffi":
        verify = partial(hasher.verify, encoded, password)
    elif library == "libsodium":
        verify = partial(crypto_pwhash_str_verify, encoded.encode(), password.encode())
    else:
        raise ValueError(f"unknown argon2 library {library!r}")
    verify()  # loads the library, touches the memory once
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        verify()
        times.append((time.perf_counter() - start) * 1000)
    return {
        "algorithm": "argon2id",
        "library": library,
        "time_cost": ARGON2_TIME_COST,
        "memory_cost_kib": ARGON2_MEMORY_COST_KIB,
        "parallelism": ARGON2_PARALLELISM,
        "samples": samples,
        "median_ms": rounded(percentile(times, 50), 3),
        "min_ms": rounded(min(times), 3),
        "p95_ms": rounded(percentile(times, 95), 3),
        "max_ms": rounded(max(times), 3),
    }


def measure_argon2_floors(samples: int = DEFAULT_FLOOR_SAMPLES) -> dict[str, dict[str, Any]]:
    """The floor measured with each library, by library name."""
    return {library: measure_argon2_floor(samples, library) for library in FLOOR_LIBRARIES}


def combine_floors(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """The floor: the lowest median of every library, before and after the runs;
    every measurement kept for the record."""
    measured = [
        (when, library, floor)
        for when, floors in (("before", before), ("after", after or {}))
        for library, floor in floors.items()
    ]
    when, library, chosen = min(measured, key=lambda item: item[2]["median_ms"])
    return {
        **chosen,
        "chosen": when,
        "before": before[library],
        "after": (after or {}).get(library),
        "libraries": {name: {"before": before.get(name), "after": (after or {}).get(name)} for name in FLOOR_LIBRARIES},
        "method": (
            "median of `samples` local verifies with each library (argon2-cffi, libsodium), measured before and "
            "after the load runs; the lowest median"
        ),
    }


# --- the two servers --------------------------------------------------------------------------


class Target:
    """What the benchmark needs of one server: paths, login bodies, fresh access tokens."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        login_path: str,
        login_field: str,
        me_path: str,
        health_path: str | None,
        idle_path: str,
        token_field: str,
        users: Sequence[tuple[str, str]],
    ) -> None:
        self.name = name
        self.url = check_target(url)
        parts = urlsplit(self.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.login_path = login_path
        self.login_field = login_field
        self.me_path = me_path
        self.health_path = health_path
        self.idle_path = idle_path
        self.token_field = token_field
        self.users = list(users)

    def login_bodies(self) -> list[str]:
        return [json.dumps({self.login_field: email, "password": password}) for email, password in self.users]

    def login_requests(self, host_header: str | None = None) -> list[bytes]:
        host = host_header or f"{self.host}:{self.port}"
        headers = {"Content-Type": "application/json"}
        return [
            request_bytes(
                "POST", self.login_path, host=host, headers=headers, body=body.encode(), user_agent=USER_AGENT
            )
            for body in self.login_bodies()
        ]

    def tokens(self) -> list[str]:
        """A fresh access token per user (the peer's live 5 minutes: fetched right before use)."""
        tokens = []
        with httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT * 2, trust_env=False) as client:
            for email, password in self.users:
                response = client.post(self.login_path, json={self.login_field: email, "password": password})
                if response.status_code == 429:
                    raise BenchmarkError(f"{self.name}: login answered 429: start it with RATELIMIT_ENABLE=false")
                if response.status_code != 200:
                    raise BenchmarkError(f"{self.name}: login {response.status_code}: {response.text[:300]}")
                tokens.append(response.json()[self.token_field])
        return tokens

    def me_requests(self, tokens: Sequence[str], host_header: str | None = None) -> list[bytes]:
        host = host_header or f"{self.host}:{self.port}"
        return [
            request_bytes(
                "GET", self.me_path, host=host, headers={"Authorization": f"Bearer {token}"}, user_agent=USER_AGENT
            )
            for token in tokens
        ]

    def idle_request(self, host_header: str | None = None) -> bytes:
        return request_bytes(
            "GET", self.idle_path, host=host_header or f"{self.host}:{self.port}", user_agent=USER_AGENT
        )


def velro_target(url: str, users: Sequence[tuple[str, str]]) -> Target:
    return Target(
        "velro",
        url,
        login_path=f"{API}/login",
        login_field="email",
        me_path=f"{API}/me",
        health_path="/health",
        idle_path="/health",
        token_field="access_token",
        users=users,
    )


def peer_target(url: str, users: Sequence[tuple[str, str]]) -> Target:
    return Target(
        "peer",
        url,
        login_path="/api/token/",
        login_field="username",
        me_path="/api/me/",
        health_path=None,
        idle_path="/api/me/",  # 401 without a token: the peer's cheapest answer
        token_field="access",
        users=users,
    )


def make_users(count: int) -> list[tuple[str, str]]:
    run_id = secrets.token_hex(4)
    password = f"Bench-{secrets.token_urlsafe(18)}"
    return [(f"bench-{run_id}-{i}@example.com", password) for i in range(count)]


def signup_velro(url: str, users: Sequence[tuple[str, str]]) -> None:
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT * 2, trust_env=False) as client:
        for email, password in users:
            response = client.post(f"{API}/signup", json={"email": email, "password": password})
            if response.status_code == 429:
                raise BenchmarkError("signup answered 429 rate_limited: start Velro with RATELIMIT_ENABLE=false")
            if response.status_code != 201:
                raise BenchmarkError(f"signup {email}: {response.status_code} {response.text[:300]}")


def quick_get(host: str, port: int, request: bytes, timeout: float = 2.0) -> tuple[int | None, float]:
    """One request on a new connection, stdlib only: (status or None, ms)."""
    start = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
            data = sock.recv(64)
        status = int(data[9:12]) if data.startswith(b"HTTP/1.") else None
    except (OSError, ValueError):
        status = None
    return status, (time.perf_counter() - start) * 1000


def settle(target: Target, timeout: float = SETTLE_TIMEOUT) -> float:
    """Wait (bounded) until the target answers its cheapest request quickly three times in a
    row, so the backlog of one run does not leak into the next. Returns the seconds waited."""
    start = time.monotonic()
    quick = 0
    request = target.idle_request()
    while time.monotonic() - start < timeout and quick < 3:
        status, ms = quick_get(target.host, target.port, request)
        quick = quick + 1 if status is not None and ms < SETTLE_QUICK_MS else 0
        time.sleep(0.05)
    return time.monotonic() - start


# --- one run ---------------------------------------------------------------------------------


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "p50_ms": rounded(percentile(values, 50)),
        "p90_ms": rounded(percentile(values, 90)),
        "p99_ms": rounded(percentile(values, 99)),
        "max_ms": rounded(max(values) if values else None),
    }


def summarize_raw(target: str, scenario: str, mode: str, result: RawResult) -> dict[str, Any]:
    ok = result.latencies([s for s in result.latencies_ms if 200 <= s < 300])
    every = result.latencies()
    row: dict[str, Any] = {
        "target": target,
        "scenario": scenario,
        "mode": mode,
        "tool": "rawload",
        "loop": result.loop,
        "rate": result.rate,
        "connections": result.connections,
        "processes": result.processes,
        "duration_s": result.duration_s,
        "requests": result.planned,
        "responses": result.responses,
        "ok": len(ok),
        "success_rate": round(len(ok) / result.planned, 4) if result.planned else 0.0,
        "ok_rps": round(len(ok) / result.duration_s, 2),
        "status_counts": result.status_counts,
        "errors": dict(sorted(result.errors.items())),
        "error_count": result.error_count,
        **_stats(every),
        "ok_latency": _stats(ok),
        "connected": result.connected,
        "peak_open": result.peak_open,
        "reconnects": result.reconnects,
        "warmup_errors": dict(result.warmup_errors),
        "ramp_s": round(result.ramp_s, 2),
        "generator_lag_p99_ms": rounded(percentile(result.lag_ms, 99)),
        "generator_gc_pause_max_ms": rounded(max(result.gc_pauses_ms, default=0.0)),
    }
    if scenario == "overload":
        row["shed"] = {"count": len(result.latencies([503])), **_stats(result.latencies([503]))}
        row["served"] = {"count": len(result.latencies([200])), **_stats(result.latencies([200]))}
    return row


def summarize_wrk(target: str, scenario: str, report: dict[str, Any]) -> dict[str, Any]:
    return {
        "target": target,
        "scenario": scenario,
        "mode": "saturation",
        **report,
        "rate": None,
        "success_rate": round(report["ok"] / report["requests"], 4) if report["requests"] else 0.0,
        "error_count": sum(report["socket_errors"].values()),
    }


def _scenario_label(row: dict[str, Any]) -> str:
    """The scenario, and for the mfa sequence the request kind (mfa:verify...)."""
    return f"{row['scenario']}:{row['step']}" if row.get("step") else row["scenario"]


def _fmt_rate(rate: float | None) -> str:
    if rate is None:
        return "sat"
    return str(int(rate)) if float(rate).is_integer() else f"{rate:g}"


# --- the benchmark ----------------------------------------------------------------------------


# One request per connection every OPEN_LOOP_PERIOD seconds: shorter than the
# servers' keep-alive timeouts (gunicorn's and nginx's 5 s), so no connection is
# closed as idle just as its next request leaves (a period of 5 s raced them).
# A connection is still busy at its next send only when its previous answer
# took longer than the period; that wait counts (latency runs from the schedule).
OPEN_LOOP_PERIOD = 3.0


def open_connections(rate: float) -> int:
    """Connections of an open-loop login run at `rate`."""
    return max(8, min(4000, math.ceil(rate * OPEN_LOOP_PERIOD)))


class Benchmark:
    def __init__(self, targets: list[Target], options: dict[str, Any], out_dir: Path, deadline_at: float) -> None:
        self.targets = targets
        self.velro = targets[0]
        self.peer = targets[1] if len(targets) > 1 else None
        self.o = options
        self.out_dir = out_dir
        self.deadline_at = deadline_at
        self.runs: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.saturation: dict[tuple[str, str], float] = {}
        self.skipped: list[str] = []
        self._cpu_mark: list[int] | None = None

    def _mark(self) -> None:
        """The measured part of a run starts: its CPU steal is counted from here."""
        self._cpu_mark = cpu_times()

    def _time_left(self, needed: float, what: str) -> bool:
        if time.monotonic() + needed > self.deadline_at:
            self.skipped.append(what)
            self.notes.append(f"deadline: skipped {what}")
            log(self.notes[-1])
            return False
        return True

    def _settle(self, target: Target, timeout: float = SETTLE_TIMEOUT) -> None:
        waited = settle(target, timeout)
        if waited > 2:
            log(f"waited {waited:.1f} s for {target.name} to drain")

    def _record(self, row: dict[str, Any]) -> dict[str, Any]:
        row["cpu_steal_pct"] = steal_pct(self._cpu_mark, cpu_times())
        self._cpu_mark = None
        self.runs.append(row)
        extra = ""
        if row.get("errors") or row.get("socket_errors"):
            extra = f", errors {row.get('errors') or row.get('socket_errors')}"
        if (row["cpu_steal_pct"] or 0) >= STEAL_WARN_PCT:
            extra += f", CPU steal {row['cpu_steal_pct']}%"
        log(
            f"{row['target']:5} {_scenario_label(row):8} {_fmt_rate(row['rate']):>6}: {row['requests']} requests, "
            f"{row['ok_rps']} ok/s, statuses {row['status_counts']}, p50 {row['p50_ms']} ms, "
            f"p99 {row['p99_ms']} ms{extra}"
        )
        return row

    # saturation (wrk)

    def saturation_run(self, scenario: str) -> None:
        o = self.o
        for target in self.targets:
            if scenario == "health" and target.health_path is None:
                continue
            if not self._time_left(o["warmup"] + o["duration"] + 20, f"{target.name} {scenario} saturation"):
                return
            if scenario == "login":
                path, method = target.login_path, "POST"
                specs = [{"headers": {"Content-Type": "application/json"}, "body": b} for b in target.login_bodies()]
                connections = o["login_connections"]
            elif scenario == "me":
                path, method = target.me_path, "GET"
                specs = [{"headers": {"Authorization": f"Bearer {t}"}} for t in target.tokens()]
                connections = o["me_connections"]
            else:
                path, method, specs, connections = target.health_path, "GET", [{}], o["me_connections"]
            self._settle(target)
            common = {"method": method, "requests": specs, "connections": connections, "threads": o["wrk_threads"]}
            if o["warmup"] > 0:
                run_wrk(target.url, path, duration=o["warmup"], **common)
            self._mark()
            report = run_wrk(target.url, path, duration=o["duration"], timeout=REQUEST_TIMEOUT, **common)
            row = self._record(summarize_wrk(target.name, scenario, report))
            self.saturation[(target.name, scenario)] = row["ok_rps"]

    # open loop (rawload)

    def _open(self, target: Target, scenario: str, mode: str, **kwargs: Any) -> dict[str, Any]:
        self._mark()
        result = run_open_loop(target.host, target.port, timeout=REQUEST_TIMEOUT, **kwargs)
        return self._record(summarize_raw(target.name, scenario, mode, result))

    def login_rates(self) -> list[float]:
        if self.o["rates"]:
            return [float(r) for r in self.o["rates"]]
        sat = self.saturation.get(("velro", "login")) or FALLBACK_LOGIN_SAT
        rates = [self.o["low_rate"]] + [round(sat * f, 1) for f in DEFAULT_FRACTIONS]
        return sorted({max(0.5, r) for r in rates})

    def openloop(self) -> None:
        duration = self.o["open_duration"]
        for rate in self.login_rates():
            for target in self.targets:
                if not self._time_left(duration + 25, f"{target.name} login open loop @ {_fmt_rate(rate)}"):
                    return
                self._settle(target)
                connections = open_connections(rate)
                self._open(
                    target,
                    "login",
                    "open",
                    requests=target.login_requests(),
                    warmup=target.idle_request(),
                    rate=rate,
                    duration=duration,
                    connections=connections,
                )

    def overload(self) -> None:
        sat = self.saturation.get(("velro", "login")) or FALLBACK_LOGIN_SAT
        rate = round(self.o["overload_factor"] * sat, 1)
        duration = self.o["overload_duration"]
        if not self._time_left(duration + 40, f"velro overload @ {rate}"):
            return
        self._settle(self.velro)
        connections = open_connections(rate)
        self._open(
            self.velro,
            "overload",
            "overload",
            requests=self.velro.login_requests(),
            warmup=self.velro.idle_request(),
            rate=rate,
            duration=duration,
            connections=connections,
        )
        self._settle(self.velro, timeout=30)

    def many(self) -> None:
        from loadtest.proxy import NginxProxy

        sat = self.saturation.get(("velro", "me")) or FALLBACK_ME_SAT
        rate = round(sat / 2, 1)
        connections = self.o["many_connections"]
        duration = self.o["many_duration"]
        ramp_rate = self.o["many_ramp_rate"]
        if not self._time_left(duration + connections / ramp_rate + 60, f"velro many clients @ {rate}"):
            return
        self._settle(self.velro)
        tokens = self.velro.tokens()
        with NginxProxy(self.out_dir / "nginx", self.velro.port, access_log_off=True) as proxy:
            self.notes.append(
                "many clients: nginx (deploy/nginx/velro.conf, worker settings of deploy/nginx/nginx.conf: "
                + ", ".join(f"{k} {v}" for k, v in proxy.settings.items())
                + ") with its access log off in the benchmark's private copy (one JSON line per request costs CPU)"
            )
            host = f"127.0.0.1:{proxy.port}"
            self._mark()
            result = run_open_loop(
                "127.0.0.1",
                proxy.port,
                self.velro.me_requests(tokens, host_header=host),
                warmup=self.velro.me_requests(tokens[:1], host_header=host)[0],
                rate=rate,
                duration=duration,
                connections=connections,
                processes=self.o["many_processes"],
                ramp_rate=ramp_rate,
                timeout=REQUEST_TIMEOUT,
            )
            row = self._record(summarize_raw("velro", "many", "many", result))
            row["proxy"] = {"server": "nginx", **proxy.settings}

    def run(self) -> None:
        scenarios = self.o["scenarios"]
        for scenario in ("login", "me", "health"):
            if scenario in scenarios:
                self.saturation_run(scenario)
        if "openloop" in scenarios:
            self.openloop()
        if "overload" in scenarios:
            self.overload()
        if "many" in scenarios:
            self.many()
        if "mfa" in scenarios:
            self.mfa()

    # second factors (loadtest.mfa): Velro only

    def mfa(self) -> None:
        count = self.o["mfa_users"]
        if not self._time_left(count * 1.0 + 60, "velro mfa sequence"):
            return
        self._settle(self.velro)
        users = [(email.replace("bench-", "bench-mfa-", 1), password) for email, password in make_users(count)]
        try:
            rows = run_mfa(self.velro.url, users, concurrency=self.o["mfa_concurrency"], log=log)
        except MfaUnavailable as exc:
            self.notes.append(f"mfa: skipped: {exc}")
            log(self.notes[-1])
            return
        for row in rows:
            self._record(row)


# --- the figures ------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, 3)


def _find(runs: Sequence[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in runs:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _steal(*rows: dict[str, Any] | None) -> float | None:
    """The most CPU steal among the runs behind a figure (None: not measured)."""
    values = [row["cpu_steal_pct"] for row in rows if row and row.get("cpu_steal_pct") is not None]
    return max(values) if values else None


def figures(runs: Sequence[dict[str, Any]], floor: dict[str, Any], low_rate: float | None, nproc: int) -> list[dict]:
    """The headline figures: each as Velro, peer, Velro/peer, Velro/floor, target and pass."""
    floor_ms = floor.get("median_ms")
    out: list[dict[str, Any]] = []

    def add(name: str, unit: str, velro: Any, peer: Any, **extra: Any) -> None:
        out.append({"figure": name, "unit": unit, "velro": velro, "peer": peer, **extra})

    has_peer = any(row["target"] == "peer" for row in runs)
    add(
        "argon2id floor (median local verify)", "ms", floor_ms, floor_ms if has_peer else None, target=None, passed=None
    )
    low_v = _find(runs, target="velro", scenario="login", mode="open", rate=low_rate)
    low_p = _find(runs, target="peer", scenario="login", mode="open", rate=low_rate)
    if low_v:
        v, p = low_v["ok_latency"]["p50_ms"], low_p["ok_latency"]["p50_ms"] if low_p else None
        ratio_floor = _ratio(v, floor_ms)
        add(
            f"login p50 @ {_fmt_rate(low_rate)} RPS open loop",
            "ms",
            v,
            p,
            vs_peer=_ratio(v, p),
            vs_floor=ratio_floor,
            peer_vs_floor=_ratio(p, floor_ms),
            target=f"<= {TARGET_FLOOR_RATIO:.2f}x floor",
            passed=None if ratio_floor is None else ratio_floor <= TARGET_FLOOR_RATIO and low_v["error_count"] == 0,
            steal_pct=_steal(low_v, low_p),
        )
    ideal = (nproc * 1000.0 / floor_ms) if floor_ms else None
    for scenario, name, goal in (
        ("login", "login throughput (wrk, saturation)", TARGET_LOGIN_VS_PEER),
        ("me", "GET /me throughput (wrk, saturation)", TARGET_ME_VS_PEER),
        ("health", "GET /health throughput (wrk, saturation)", None),
    ):
        v_row = _find(runs, target="velro", scenario=scenario, mode="saturation")
        p_row = _find(runs, target="peer", scenario=scenario, mode="saturation")
        if not v_row:
            continue
        v, p = v_row["ok_rps"], p_row["ok_rps"] if p_row else None
        vs_peer = _ratio(v, p)
        add(
            name,
            "ok/s",
            v,
            p,
            vs_peer=vs_peer,
            vs_floor=_ratio(v, ideal) if scenario == "login" else None,
            peer_vs_floor=_ratio(p, ideal) if scenario == "login" else None,
            target=None if goal is None else f">= {goal:g}x peer",
            passed=None if goal is None or vs_peer is None else vs_peer >= goal,
            steal_pct=_steal(v_row, p_row),
        )
    over = _find(runs, target="velro", scenario="overload")
    if over:
        shed, served = over["shed"], over["served"]
        add(
            f"overload @ {_fmt_rate(over['rate'])} RPS: shed (503) p50",
            "ms",
            shed["p50_ms"],
            None,
            short="overload\nshed p50",
            count=shed["count"],
            target=f"<= {TARGET_SHED_P50_MS:g} ms",
            passed=None if shed["p50_ms"] is None else shed["p50_ms"] <= TARGET_SHED_P50_MS,
            steal_pct=_steal(over),
        )
        add(
            f"overload @ {_fmt_rate(over['rate'])} RPS: served (200) p99",
            "ms",
            served["p99_ms"],
            None,
            short="overload\nserved p99",
            count=served["count"],
            errors=over["error_count"],
            target=f"<= {TARGET_SERVED_P99_MS:g} ms",
            passed=None if served["p99_ms"] is None else served["p99_ms"] <= TARGET_SERVED_P99_MS,
            steal_pct=_steal(over),
        )
    many = _find(runs, target="velro", scenario="many")
    if many:
        label = f"{many['connections']} clients via nginx @ {_fmt_rate(many['rate'])} RPS"
        failed = many["requests"] - many["ok"]  # errors and non-2xx answers
        add(
            f"{label}: errors + non-2xx",
            "count",
            failed,
            None,
            target="0",
            passed=failed == 0 and many["connected"] == many["connections"],
            connected=many["connected"],
            steal_pct=_steal(many),
        )
        add(
            f"{label}: p99",
            "ms",
            many["p99_ms"],
            None,
            short=f"{many['connections']} clients\np99",
            target=f"<= {TARGET_MANY_P99_MS:g} ms",
            passed=None if many["p99_ms"] is None else many["p99_ms"] <= TARGET_MANY_P99_MS,
            steal_pct=_steal(many),
        )
    out.extend(mfa_figures(runs))
    return out


def mfa_figures(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The mfa sequence's latencies (Velro only, reported: no target yet)."""
    out = []
    for step, name in (
        ("verify", "MFA verify (TOTP)"),
        ("challenge", "MFA challenge"),
        ("recovery_verify", "recovery code verify"),
    ):
        row = _find(runs, target="velro", scenario="mfa", step=step)
        if row:
            for q in ("p50", "p90", "p99"):
                out.append(
                    {"figure": f"{name} {q}", "unit": "ms", "velro": row[f"{q}_ms"], "peer": None, "target": None}
                )
    for step, name in (("me", "GET /me p50 (aal2, mfa sequence)"), ("login", "login p50 (mfa sequence)")):
        row = _find(runs, target="velro", scenario="mfa", step=step)
        if row:
            out.append({"figure": name, "unit": "ms", "velro": row["p50_ms"], "peer": None, "target": None})
    return out


# --- running it -------------------------------------------------------------------------------


def run_benchmark(
    velro_url: str,
    *,
    peer_url: str | None,
    users: Sequence[tuple[str, str]],
    options: dict[str, Any],
    out_dir: Path,
    name: str = "perf_benchmark",
    target_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Benchmark Velro at `velro_url` (and the peer at `peer_url`, same users already seeded);
    write <name>.json and <name>.png to `out_dir`; return the result (what the JSON holds)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise BenchmarkError(f"bad output name {name!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    started_at = datetime.now(UTC)
    load_start = loadavg()
    nofile = raise_nofile_limit()

    targets = [velro_target(velro_url, users)]
    if peer_url:
        targets.append(peer_target(peer_url, users))
    for target in targets:
        status, _ = quick_get(target.host, target.port, target.idle_request(), timeout=5)
        if status is None:
            raise BenchmarkError(f"{target.name} at {target.url} does not answer")
    with httpx.Client(base_url=targets[0].url, timeout=5, trust_env=False) as client:
        response = client.get("/__version")
        version = response.json() if response.status_code == 200 else None

    floor_samples = options["floor_samples"]
    log(f"argon2id floor: {floor_samples} local verifies (m={ARGON2_MEMORY_COST_KIB} KiB, t={ARGON2_TIME_COST})")
    floor_before = measure_argon2_floors(floor_samples)
    log(f"argon2id floor, before the runs: {_floor_medians(floor_before)}")

    bench = Benchmark(targets, options, out_dir, started + options["deadline"])
    interrupted = None
    try:
        bench.run()
    except KeyboardInterrupt:
        interrupted = "interrupted: results are partial"
        bench.notes.append(interrupted)
    floor_after = measure_argon2_floors(floor_samples)
    log(f"argon2id floor, after the runs: {_floor_medians(floor_after)}")
    floor = combine_floors(floor_before, floor_after)
    machine = machine_info()
    low_rate = None if options["rates"] else float(options["low_rate"])
    if options["rates"]:
        low_rate = min(float(r) for r in options["rates"])
    figs = figures(bench.runs, floor, low_rate, machine["nproc"] or 1)
    complete = not bench.skipped and interrupted is None

    result: dict[str, Any] = {
        "schema": 2,
        "tool": "loadtest.benchmark",
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(time.monotonic() - started, 1),
        "complete": complete,
        "targets": {
            "velro": {"url": velro_url, "version": version, **(target_info or {}).get("velro", {})},
            "peer": None if not peer_url else {"url": peer_url, **(target_info or {}).get("peer", {})},
        },
        "machine": machine,
        "load_average": {"start": load_start, "end": loadavg()},
        "config": {
            **{k: v for k, v in options.items() if k != "deadline"},
            "deadline_s": options["deadline"],
            "users": len(users),
            "request_timeout_s": REQUEST_TIMEOUT,
            "login_rates": bench.login_rates() if "openloop" in options["scenarios"] else [],
            # Only the wrk scenarios need wrk: an mfa-only run on a box without it still writes its result.
            "saturation_tool": wrk_version() if shutil.which("wrk") else None,
            "open_loop_tool": "loadtest.rawload (asyncio streams, latency from the scheduled send time)",
            "rlimit_nofile": nofile,
        },
        "floor": floor,
        "figures": figs,
        "runs": bench.runs,
        "notes": bench.notes,
    }
    json_path = out_dir / f"{name}.json"
    png_path = out_dir / f"{name}.png"
    result["files"] = {"json": str(json_path), "png": str(png_path)}
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_chart(result, png_path)
    return result


# --- output -----------------------------------------------------------------------------------


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _render(lines: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    rendered = []
    for n, line in enumerate(lines):
        cells = [cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(line)]
        rendered.append("| " + " | ".join(cells) + " |")
        if n == 0:
            rendered.append("|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|")
    return "\n".join(rendered)


def format_figures(result: dict[str, Any]) -> str:
    lines = [["figure", "Velro", "peer", "vs peer", "vs floor", "target", "pass", "CPU steal %"]]
    for fig in result["figures"]:
        unit = fig["unit"]
        vs_floor = fig.get("vs_floor")
        floor_cell = "-" if vs_floor is None else f"{vs_floor:.2f}x"
        if fig.get("peer_vs_floor") is not None:
            floor_cell += f" (peer {fig['peer_vs_floor']:.2f}x)"
        passed = fig.get("passed")
        lines.append(
            [
                f"{fig['figure']} ({unit})",
                _num(fig["velro"]),
                _num(fig["peer"]),
                "-" if fig.get("vs_peer") is None else f"{fig['vs_peer']:.2f}x",
                floor_cell,
                fig.get("target") or "reported",
                "-" if passed is None else ("PASS" if passed else "FAIL"),
                _steal_cell(fig.get("steal_pct")),
            ]
        )
    return _render(lines)


def _steal_cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:g} (!)" if value >= STEAL_WARN_PCT else f"{value:g}"


def format_runs(result: dict[str, Any]) -> str:
    lines = [
        [
            "target",
            "scenario",
            "mode",
            "rate",
            "conns",
            "requests",
            "ok %",
            "ok/s",
            "p50",
            "p90",
            "p99",
            "max",
            "statuses",
            "errors",
            "CPU steal %",
        ]
    ]
    for row in result["runs"]:
        errors = row.get("errors") if row.get("tool") == "rawload" else row.get("socket_errors")
        lines.append(
            [
                row["target"],
                _scenario_label(row),
                row["mode"],
                _fmt_rate(row["rate"]),
                str(row["connections"]),
                str(row["requests"]),
                f"{row['success_rate'] * 100:.1f}",
                f"{row['ok_rps']:.1f}",
                _num(row["p50_ms"]),
                _num(row["p90_ms"]),
                _num(row["p99_ms"]),
                _num(row["max_ms"]),
                " ".join(f"{k}:{v}" for k, v in row["status_counts"].items()) or "-",
                " ".join(f"{k}:{v}" for k, v in (errors or {}).items()) or "-",
                _steal_cell(row.get("cpu_steal_pct")),
            ]
        )
    return _render(lines)


def _floor_library_medians(floor: dict[str, Any]) -> str:
    """'argon2-cffi 25.1/24.0 ms, libsodium 21.0/20.2 ms' (before/after) where both were measured."""
    parts = []
    for library, pair in (floor.get("libraries") or {}).items():
        medians = [str(m["median_ms"]) if m else "-" for m in (pair["before"], pair["after"])]
        parts.append(f"{library} {'/'.join(medians)} ms")
    return ", ".join(parts) or "one library"


def _floor_medians(floors: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{library} median {floor['median_ms']} ms" for library, floor in floors.items())


def format_summary(result: dict[str, Any]) -> str:
    machine = result["machine"]
    floor = result["floor"]
    load = result["load_average"]
    config = result["config"]
    lines = [
        f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), {machine['ram_gib']} GiB RAM, "
        f"Python {machine['python']}; load average {load['start']} -> {load['end']}",
        f"argon2id floor (m={floor['memory_cost_kib']} KiB, t={floor['time_cost']}, p={floor['parallelism']}): "
        f"median {floor['median_ms']} ms over {floor['samples']} local verifies "
        f"with {floor.get('library', 'argon2-cffi')} "
        f"(before {floor['before']['median_ms']} ms, after {floor['after']['median_ms']} ms; "
        f"{_floor_library_medians(floor)}: the lowest counts); "
        "login throughput vs floor = ok/s / (CPUs x 1000 / floor)",
        f"saturation: {config['saturation_tool']}, {config['duration']:g} s after {config['warmup']:g} s warm-up, "
        f"login {config['login_connections']} / me+health {config['me_connections']} connections, "
        f"{config['wrk_threads']} threads; open loop: {config['open_loop_tool']}",
        f"elapsed {result['elapsed_s']} s",
    ]
    disturbed = [row for row in result["runs"] if (row.get("cpu_steal_pct") or 0) >= STEAL_WARN_PCT]
    if disturbed:
        lines.append(
            f"warning: {len(disturbed)} run(s) lost >= {STEAL_WARN_PCT:g}% of the CPU time to other guests of the host"
            " (steal, marked (!)): those figures measured a smaller machine than what they are compared with;"
            " re-run on a quiet host"
        )
    lines.extend(f"note: {note}" for note in result["notes"])
    return "\n".join(lines)


def write_chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    runs = result["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    colors = {"velro": "tab:blue", "peer": "tab:orange"}

    ax = axes[0]
    floor_ms = result["floor"].get("median_ms")
    for target in ("velro", "peer"):
        rows = sorted(
            (r for r in runs if r["target"] == target and r["scenario"] == "login" and r["mode"] == "open"),
            key=lambda r: r["rate"],
        )
        if not rows:
            continue
        xs = [r["rate"] for r in rows]
        for key, style in (("p50_ms", "o-"), ("p99_ms", "^--")):
            ys = [r[key] if r[key] is not None else float("nan") for r in rows]
            ax.plot(xs, ys, style, color=colors[target], label=f"{target} {key.removesuffix('_ms')}")
    if floor_ms:
        ax.axhline(floor_ms, color="black", linestyle="-.", linewidth=1, label=f"argon2id floor {floor_ms:.1f} ms")
    ax.set_yscale("log")
    ax.set_xlabel("offered login rate (RPS, open loop)")
    ax.set_ylabel("latency (ms, from scheduled send)")
    ax.set_title("login latency vs offered load")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")

    ax = axes[1]
    labels, velro_vals, peer_vals = [], [], []
    for scenario in ("login", "me", "health"):
        v = _find(runs, target="velro", scenario=scenario, mode="saturation")
        if not v:
            continue
        p = _find(runs, target="peer", scenario=scenario, mode="saturation")
        labels.append(scenario)
        velro_vals.append(v["ok_rps"])
        peer_vals.append(p["ok_rps"] if p else 0.0)
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], velro_vals, 0.4, label="velro", color=colors["velro"])
    ax.bar([x + 0.2 for x in xs], peer_vals, 0.4, label="peer", color=colors["peer"])
    for x, v, p in zip(xs, velro_vals, peer_vals, strict=True):
        if p:
            ax.annotate(f"{v / p:.2f}x", (x, max(v, p)), ha="center", va="bottom", fontsize="small")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("2xx responses / s (wrk, closed loop)")
    ax.set_title("saturation throughput (ratio = velro / peer)")
    ax.legend(fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)

    ax = axes[2]
    bars = []
    for fig_row in result["figures"]:
        target = fig_row.get("target") or ""
        if fig_row["unit"] == "ms" and target and "floor" not in target and fig_row["velro"] is not None:
            bars.append(fig_row)
    if bars:
        names = [b.get("short") or b["figure"] for b in bars]
        values = [b["velro"] for b in bars]
        limits = [float(re.findall(r"[\d.]+", b["target"])[0]) for b in bars]
        bar_colors = ["tab:green" if b["passed"] else "tab:red" for b in bars]
        ax.bar(range(len(bars)), values, color=bar_colors)
        ax.scatter(range(len(bars)), limits, marker="_", s=900, color="black", label="target (max)")
        ax.set_xticks(range(len(bars)), names, fontsize="small")
        ax.set_yscale("log")
        ax.legend(fontsize="small")
    ax.set_ylabel("ms")
    ax.set_title("overload and many clients (velro)")
    ax.grid(True, axis="y", which="both", alpha=0.3)

    machine = result["machine"]
    fig.suptitle(
        f"Velro vs stock Django+DRF+simplejwt peer: {machine['nproc']} CPUs, {machine['cpu_model']} "
        f"({result['started_at']})",
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
        raise argparse.ArgumentTypeError(f"--rates: expected numbers like 4,20,40, got {text!r}") from None
    if not rates or any(not 0 < r <= MAX_RATE for r in rates):
        raise argparse.ArgumentTypeError(f"--rates: numbers in (0, {MAX_RATE:g}]")
    return rates


def _scenarios(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    bad = [name for name in names if name not in SCENARIOS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"--scenarios: choose among {','.join(SCENARIOS)}")
    return names


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= MAX_DURATION:
        raise argparse.ArgumentTypeError(f"a duration in (0, {MAX_DURATION:g}] s")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.benchmark",
        description="Benchmark Velro's auth hot path against a stock Django+DRF+simplejwt peer and the argon2id floor.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--url", help="a running Velro (loopback, RATELIMIT_ENABLE=false); default: start gunicorn")
    parser.add_argument("--no-peer", action="store_true", help="do not start or measure the stock peer")
    parser.add_argument(
        "--scenarios",
        type=_scenarios,
        default=list(DEFAULT_SCENARIOS),
        help=f"comma-separated among {','.join(SCENARIOS)} (default: all but mfa)",
    )
    parser.add_argument("--mfa-users", type=int, default=DEFAULT_MFA_USERS, help="mfa: users, one sequence each")
    parser.add_argument("--mfa-concurrency", type=int, default=DEFAULT_MFA_CONCURRENCY, help="mfa: parallel clients")
    parser.add_argument("--duration", type=_seconds, default=DEFAULT_DURATION, help="seconds per wrk saturation run")
    parser.add_argument("--warmup", type=float, default=DEFAULT_WARMUP, help="unmeasured wrk seconds before each")
    parser.add_argument(
        "--open-duration", type=_seconds, default=DEFAULT_OPEN_DURATION, help="seconds per open-loop run"
    )
    parser.add_argument("--low-rate", type=float, default=DEFAULT_LOW_RATE, help="login RPS of the floor-ratio run")
    parser.add_argument(
        "--rates",
        type=_rates,
        default=None,
        help="open-loop login rates (default: low rate + 25..100%% of Velro's login saturation)",
    )
    parser.add_argument("--overload-factor", type=float, default=DEFAULT_OVERLOAD_FACTOR, help="x login saturation")
    parser.add_argument("--overload-duration", type=_seconds, default=DEFAULT_OVERLOAD_DURATION)
    parser.add_argument("--many-connections", type=int, default=DEFAULT_MANY_CONNECTIONS)
    parser.add_argument("--many-duration", type=_seconds, default=DEFAULT_MANY_DURATION)
    parser.add_argument("--many-processes", type=int, default=DEFAULT_MANY_PROCESSES, help="generator processes")
    parser.add_argument("--many-ramp-rate", type=float, default=DEFAULT_MANY_RAMP_RATE, help="new connections/s")
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help="benchmark users (both servers)")
    parser.add_argument("--login-connections", type=int, default=DEFAULT_LOGIN_CONNECTIONS, help="wrk, login")
    parser.add_argument("--me-connections", type=int, default=DEFAULT_ME_CONNECTIONS, help="wrk, /me and /health")
    parser.add_argument("--wrk-threads", type=int, default=DEFAULT_WRK_THREADS)
    parser.add_argument("--floor-samples", type=int, default=DEFAULT_FLOOR_SAMPLES, help="local argon2id verifies")
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE, help="overall limit, seconds")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output (PNG beside)")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help="Velro's, when started here")
    parser.add_argument("--peer-database-url", default=DEFAULT_PEER_DATABASE_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="Velro's, when started here")
    parser.add_argument("--broker-url", default=None, help="Velro's; default: the settings' (REDIS_URL)")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> dict[str, Any]:
    if not 1 <= args.users <= MAX_USERS:
        raise BenchmarkError(f"users {args.users} out of range [1, {MAX_USERS}]")
    if not 0 < args.deadline <= MAX_DEADLINE:
        raise BenchmarkError(f"deadline {args.deadline} out of range (0, {MAX_DEADLINE:g}] s")
    if not 1 <= args.many_connections <= 50_000:
        raise BenchmarkError("--many-connections out of range [1, 50000]")
    if not 1 <= args.mfa_users <= MAX_USERS or not 1 <= args.mfa_concurrency <= 64:
        raise BenchmarkError(f"--mfa-users in [1, {MAX_USERS}], --mfa-concurrency in [1, 64]")
    if not 0 < args.low_rate <= MAX_RATE or not 0 < args.overload_factor <= 20:
        raise BenchmarkError("--low-rate / --overload-factor out of range")
    return {
        "scenarios": list(args.scenarios),
        "duration": args.duration,
        "warmup": max(0.0, args.warmup),
        "open_duration": args.open_duration,
        "low_rate": args.low_rate,
        "rates": args.rates,
        "overload_factor": args.overload_factor,
        "overload_duration": args.overload_duration,
        "many_connections": args.many_connections,
        "many_duration": args.many_duration,
        "many_processes": max(1, args.many_processes),
        "many_ramp_rate": max(10.0, args.many_ramp_rate),
        "login_connections": max(1, args.login_connections),
        "me_connections": max(1, args.me_connections),
        "wrk_threads": max(1, args.wrk_threads),
        "floor_samples": max(1, min(args.floor_samples, MAX_FLOOR_SAMPLES)),
        "deadline": args.deadline,
        "mfa_users": args.mfa_users,
        "mfa_concurrency": max(1, args.mfa_concurrency),
    }


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start what is needed (Velro unless --url, the peer unless --no-peer), measure, stop."""
    from contextlib import ExitStack

    from loadtest.peerstack import PeerStack

    options = options_from(args)
    out: Path = args.out
    run_dir = out.parent
    users = make_users(args.users)
    info: dict[str, Any] = {}
    with ExitStack() as stack:
        if args.url:
            velro_url = check_target(args.url)
            info["velro"] = {"started_by_benchmark": False}
        else:
            log("starting Velro: gunicorn (RATELIMIT_ENABLE=false)")
            velro = stack.enter_context(
                Stack(
                    run_dir=run_dir,
                    database_url=args.database_url,
                    redis_url=args.redis_url,
                    broker_url=args.broker_url,
                    fresh_database=True,  # each run measures the same empty tables, not the last runs' rows
                )
            )
            velro_url = velro.web.url
            info["velro"] = stack_info(velro)
        log(f"signing up {len(users)} users on Velro")
        signup_velro(velro_url, users)
        peer_url = None
        if not args.no_peer:
            peer = stack.enter_context(PeerStack(run_dir=run_dir, users=users, database_url=args.peer_database_url))
            peer_url = peer.url
            info["peer"] = {
                "server": f"gunicorn -w {peer.workers} stockpeer.wsgi (sync workers, stock defaults)",
                "stack": "Django + DRF + djangorestframework-simplejwt (loadtest/peer/requirements.txt)",
                "database_url": redact(peer.db.url),
                "log": str(peer.web.log_path),
            }
        return run_benchmark(
            velro_url, peer_url=peer_url, users=users, options=options, out_dir=run_dir, name=out.stem, target_info=info
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out.suffix != ".json":
        print("--out must name a .json file", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        result = run(args)
    except LoadTestError as exc:
        print(f"perf_benchmark: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("perf_benchmark: interrupted", file=sys.stderr)
        return 130
    print(format_figures(result))
    print()
    print(format_runs(result))
    print()
    print(format_summary(result))
    print(f"JSON: {result['files']['json']}\nPNG:  {result['files']['png']}")
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
