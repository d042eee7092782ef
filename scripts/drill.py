#!/usr/bin/env python3
"""Velro fault drill: the failure contract of DESIGN.md, proven under load.

One command:

    .venv/bin/python scripts/drill.py                      # 10 s per fault, 20 RPS, all five faults
    .venv/bin/python scripts/drill.py --fault-seconds 3 --rps 10          # the CI length
    .venv/bin/python scripts/drill.py --faults db_stall,celery_worker --keep

It starts its own isolated stack on loopback and never touches the machine's
main Redis (6379) or the main databases:

- a dedicated PostgreSQL database (`velro_drill`: dropped, created and migrated
  at start, dropped at the end unless --keep) on 127.0.0.1:5432 as role root;
- two dedicated redis-server processes on free ports, one for the cache and one
  for the Celery broker, without persistence, so either can be stopped and
  restarted on its port (and comes back empty, like a crashed Redis would);
- an aiosmtpd SMTP listener in this process, recording every message by its
  `X-Velro-Event` header and recipients;
- gunicorn (gunicorn.conf.py, 2 workers), a Celery worker and Celery beat, each
  in its own process group, all pointed at the above, with short sweeper,
  visibility and breaker timings (see `stack_env`).

Then it drives steady open-loop traffic (request i leaves at t0 + i/rps, answered
or not) with the benchmark's load generator (scripts/perf_benchmark.py:
`timed_request`, `make_scenario`, `Pools`): 15% signups with the referral codes
of earlier drill users (one in ten an unknown code), 20% logins, 20% refreshes,
45% GET /me; and injects, one at a time, each for --fault-seconds followed by a
recovery window (--recovery-seconds, then at most 30 s more until no request
has been waiting over 1 s, so one fault's backlog is not blamed on the next):

    cache_redis      the cache redis-server stopped (SIGTERM), then restarted on its port
    db_stall         a second connection holds LOCK TABLE auth_users IN ACCESS EXCLUSIVE MODE
    broker_redis     the broker redis-server stopped, then restarted (empty) on its port
    celery_worker    the Celery worker's process group SIGKILLed with tasks in flight; a new one started
    gunicorn_worker  one gunicorn worker SIGKILLed (the master replaces it; the window
                     lasts until the replacement has warmed up)

Requests are counted in the window in which they were sent. The contract per
window: no 4xx (the drill sends only valid requests), no 5xx except 503 +
Retry-After for a request that was in flight while auth_users was locked, no
request unanswered within 5 s, no dropped connection except for requests in
flight (or queued) on the gunicorn worker at the instant it was killed, and
every process of the stack still running at the end of the window (one that
died is reported against that window and restarted, as a supervisor would).

After the last fault it waits (bounded, --settle-seconds) for the sweeper and
redelivery to finish the work, then checks, directly in the database and in
the SMTP listener: every signup answered 201 is present (user + mirror row);
every referral intent processed, with one Referral each, credited exactly once
when its code was valid, rejected otherwise (and each referrer's
credited_count equal to its credited referrals); every expected email (a
welcome per user, a referral email per credited referral) delivered exactly
once, to the right address.

Output: a Markdown table and the invariant lines on stdout, the JSON report
(every request, the fault timeline, ERROR lines of the stack's logs) in
var/drill/drill.json (--out); logs in var/drill/. Exit status 0 only when every
window kept the contract and nothing was lost or duplicated; 1 otherwise; 2
when the stack could not be set up; 130 when interrupted (Ctrl-C and SIGTERM
stop the stack and drop the database; a drill killed with SIGKILL leaves
processes that the next drill on the same --run-dir stops first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import email
import fcntl
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from aiosmtpd.controller import Controller

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf_benchmark as bench  # the benchmark's load generator, reused

BASE_DIR = bench.BASE_DIR
API = bench.API

FAULTS = ("cache_redis", "db_stall", "broker_redis", "celery_worker", "gunicorn_worker")
FAULT_TITLES = {
    "baseline": "baseline (no fault)",
    "cache_redis": "cache Redis stopped + restarted",
    "db_stall": "Postgres stall (auth_users ACCESS EXCLUSIVE lock)",
    "broker_redis": "broker Redis stopped + restarted",
    "celery_worker": "Celery worker SIGKILLed mid-task + restarted",
    "gunicorn_worker": "gunicorn worker SIGKILLed",
}

# The traffic mix (weights): mostly token-authenticated reads, as in real use.
# Signups carry the background work: each writes a welcome email and, with a
# valid code, a referral to credit and the referrer's email.
MIX = (("signup", 0.15), ("login", 0.20), ("refresh", 0.20), ("me", 0.45))
DRAIN_TIMEOUT = 30.0  # seconds after a recovery window for the backlog to clear
UNKNOWN_CODE_SHARE = 0.1  # of signups: a well-formed code nobody owns (must be rejected, not credited)
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Passwords from letters that occur nowhere in the drill's emails
# ("drill-<hex>-<n>@example.com"): Django's similarity validator compares
# character multisets, and a random password sharing the email's letters is
# now and then refused as "too similar to the email" (a 400 the drill would
# otherwise count against the service).
PASSWORD_ALPHABET = "ghjknqstuvwyzGHJKNQSTUVWYZ"
SEED_USERS = 3

PG_HOST, PG_PORT, PG_ROLE = "127.0.0.1", 5432, "root"
DEFAULT_DATABASE = "velro_drill"
DEFAULT_RUN_DIR = BASE_DIR / "var" / "drill"
WEB_CONCURRENCY = 2
GUNICORN_THREADS = 2
CELERY_CONCURRENCY = 2

DEFAULT_FAULT_SECONDS = 10.0
DEFAULT_RPS = 20.0
DEFAULT_SETTLE_SECONDS = 90.0
KNOWN_UPSTREAM = "known upstream bug (kombu), supervised: "
KOMBU_RESTORE_CRASH = "'NoneType' object has no attribute 'hostname'"
DEFAULT_DEADLINE = 900.0
MAX_RPS = 200.0
MAX_FAULT_SECONDS = 120.0
MAX_REQUESTS_CAP = 50_000
PROCESS_READY_TIMEOUT = 90.0


class DrillError(RuntimeError):
    """The drill cannot run (setup failed, bad arguments)."""


def log(message: str) -> None:
    print(f"[drill] {message}", file=sys.stderr, flush=True)


# --- processes ----------------------------------------------------------------------------------


class Proc:
    """A subprocess with its own log file, in its own process group."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.registry: PidRegistry | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as fh:
            fh.write(f"\n===== [drill] start #{self.starts}: {' '.join(self.argv)}\n".encode())
            fh.flush()
            self.proc = subprocess.Popen(
                self.argv,
                cwd=BASE_DIR,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: killpg reaches its children too
            )
        if self.registry is not None:
            self.registry.add(self.proc.pid)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def current_log(self) -> str:
        """The log since the latest start."""
        return self.log_text().rsplit("===== [drill] start #", 1)[-1]

    def wait_log(self, needle: str, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.current_log():
            if not self.alive:
                raise DrillError(f"{self.name} exited ({self.proc and self.proc.returncode}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise DrillError(f"{self.name}: {needle!r} not logged within {timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the whole process group at once."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL to the whole group (whatever is left of it)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): with the pid, its identity."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[19]
    except (OSError, IndexError):
        return None


class PidRegistry:
    """The process groups this drill started, on disk (run dir / pids.json).

    A drill that is itself SIGKILLed cannot stop its stack; the next drill on
    the same run dir reaps what is left (only processes whose pid *and* start
    time match, so a recycled pid is never touched).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, str] = {}

    def reap_stale(self) -> int:
        try:
            stale = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 0
        reaped = 0
        for pid, started in stale.items() if isinstance(stale, dict) else ():
            if str(pid).isdigit() and _start_time(int(pid)) == started:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(pid), signal.SIGKILL)
                    reaped += 1
        self.path.unlink(missing_ok=True)
        return reaped

    def add(self, pid: int) -> None:
        started = _start_time(pid)
        if started is not None:
            self.entries[str(pid)] = started
            self.path.write_text(json.dumps(self.entries), encoding="utf-8")

    def clear(self) -> None:
        self.entries.clear()
        self.path.unlink(missing_ok=True)


class RedisServer(Proc):
    """A dedicated redis-server on a loopback port, no persistence."""

    def __init__(self, name: str, *, run_dir: Path) -> None:
        self.port = bench._free_port()
        redis_bin = shutil.which("redis-server")
        if redis_bin is None:
            raise DrillError("redis-server not found (apt-get install redis-server; ./scripts/test.sh does)")
        argv = [
            redis_bin,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(run_dir),
        ]
        super().__init__(name, argv, env=dict(os.environ), log_path=run_dir / f"{name}.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)

    def ping(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self) -> None:
        super().start()
        deadline = time.monotonic() + 15
        while not self.ping():
            if not self.alive:
                raise DrillError(f"{self.name} exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise DrillError(f"{self.name} did not answer PING on port {self.port} within 15 s")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)


class WebTier(bench.LocalStack):
    """The benchmark's gunicorn launcher, with the drill's environment."""

    def __init__(self, *, base_env: dict[str, str], database_url: str, run_dir: Path) -> None:
        super().__init__(
            database_url=database_url,
            redis_url=base_env["REDIS_URL"],
            broker_url=base_env["CELERY_BROKER_URL"],
            log_path=run_dir / "gunicorn.log",
        )
        self.base_env = base_env

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(self.base_env)
        env["BIND"] = f"127.0.0.1:{self.port}"
        return env

    def worker_pids(self) -> list[int]:
        return [] if self.proc is None else children(self.proc.pid)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may contain spaces and parentheses.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry))
    return sorted(found)


# --- SMTP ---------------------------------------------------------------------------------------


@dataclass
class Mail:
    event: str | None
    to: str
    recipients: list[str]
    subject: str
    at: float


class SmtpSink:
    """An aiosmtpd handler: every message, by X-Velro-Event and recipient."""

    def __init__(self) -> None:
        self.mails: list[Mail] = []
        self._lock = threading.Lock()
        self.t0 = time.monotonic()

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.original_content or envelope.content)
        mail = Mail(
            event=message["X-Velro-Event"],
            to=str(message["To"] or ""),
            recipients=[str(r).lower() for r in envelope.rcpt_tos],
            subject=str(message["Subject"] or ""),
            at=round(time.monotonic() - self.t0, 3),
        )
        with self._lock:
            self.mails.append(mail)
        return "250 Message accepted for delivery"

    def snapshot(self) -> list[Mail]:
        with self._lock:
            return list(self.mails)


class SmtpListener:
    def __init__(self) -> None:
        self.port = bench._free_port()
        self.sink = SmtpSink()
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.controller.stop()


# --- database -----------------------------------------------------------------------------------


def pg_connect(dbname: str, **kwargs: Any) -> psycopg.Connection:
    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_ROLE, dbname=dbname, connect_timeout=5, **kwargs)


def check_database_name(name: str) -> str:
    # The drill drops this database: only names of its own family are accepted.
    if not re.fullmatch(r"velro_drill[A-Za-z0-9_]{0,40}", name):
        raise DrillError(f"--database {name!r}: the drill drops it, so it must start with 'velro_drill'")
    return name


@contextlib.contextmanager
def database_lock(name: str) -> Any:
    """One drill per database at a time (the drill drops it)."""
    path = Path(tempfile.gettempdir()) / f"velro-{name}.lock"
    with path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DrillError(f"another drill is running on database {name} (lock {path})") from None
        yield


def database_recreate(name: str) -> None:
    try:
        with pg_connect("postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise DrillError(f"cannot (re)create database {name} on {PG_HOST}:{PG_PORT} as {PG_ROLE}: {exc}") from exc


def database_drop(name: str) -> None:
    try:
        with pg_connect("postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.Error as exc:
        log(f"could not drop database {name}: {exc}")


# --- the stack ----------------------------------------------------------------------------------


def python_bin() -> str:
    return bench._venv_bin("python")


class Stack:
    """Everything the drill runs; close() stops all of it (also after a failed start)."""

    def __init__(self, *, run_dir: Path, database: str, keep: bool) -> None:
        self.run_dir = run_dir
        self.database = database
        self.keep = keep
        self.database_url = f"postgres://{PG_ROLE}@{PG_HOST}:{PG_PORT}/{database}"
        self.smtp: SmtpListener | None = None
        self.cache: RedisServer | None = None
        self.broker: RedisServer | None = None
        self.web: WebTier | None = None
        self.worker: Proc | None = None
        self.beat: Proc | None = None
        self.env: dict[str, str] = {}
        self.db_created = False
        self.worker_generation = 0
        self.pids = PidRegistry(run_dir / "pids.json")

    def _own(self, proc: Proc) -> Proc:
        proc.registry = self.pids
        return proc

    def stack_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("DJANGO_ENV_FILE", "CELERY_BROKER_READ_URL", "CELERY_BROKER_WRITE_URL", "GUNICORN_THREADS"):
            env.pop(name, None)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "velro.settings",
                "DJANGO_DEBUG": "false",
                "DJANGO_SECRET_KEY": secrets.token_urlsafe(48),  # one key for web, worker and beat
                "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
                "DATABASE_URL": self.database_url,
                "REDIS_URL": self.cache.url,
                "CELERY_BROKER_URL": self.broker.url,
                "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
                "EMAIL_HOST": "127.0.0.1",
                "EMAIL_PORT": str(self.smtp.port),
                "EMAIL_USE_TLS": "false",
                "EMAIL_HOST_USER": "",
                "EMAIL_HOST_PASSWORD": "",
                "RATELIMIT_ENABLE": "false",
                "WEB_CONCURRENCY": str(WEB_CONCURRENCY),
                "GUNICORN_THREADS": str(GUNICORN_THREADS),
                "REFERRAL_SWEEP_INTERVAL_SECONDS": "5",
                "REFERRAL_SWEEP_MIN_AGE_SECONDS": "3",
                "CELERY_VISIBILITY_TIMEOUT": "20",
                "CELERY_TASK_TIME_LIMIT": "10",
                "CELERY_TASK_SOFT_TIME_LIMIT": "8",
                "CACHE_BREAKER_COOLDOWN_SECONDS": "1",
                "DB_BREAKER_COOLDOWN_SECONDS": str(Exposure.BREAKER_COOLDOWN),
                "CELERY_ENQUEUE_COOLDOWN_SECONDS": "1",
                "LOG_FORMAT": "plain",
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        reaped = self.pids.reap_stale()
        if reaped:
            log(f"stopped {reaped} process groups left behind by an earlier drill that was killed")
        for pattern in ("*.log", "celerybeat-schedule*"):
            for path in self.run_dir.glob(pattern):
                path.unlink()
        self.smtp = SmtpListener()
        self.smtp.start()
        log(f"SMTP listener on 127.0.0.1:{self.smtp.port}")
        self.cache = self._own(RedisServer("redis-cache", run_dir=self.run_dir))
        self.cache.start()
        self.broker = self._own(RedisServer("redis-broker", run_dir=self.run_dir))
        self.broker.start()
        log(f"redis-server: cache on port {self.cache.port}, broker on port {self.broker.port}")
        self.env = self.stack_env()
        log(f"database {self.database}: dropped and created")
        database_recreate(self.database)
        self.db_created = True
        self.web = WebTier(base_env=self.env, database_url=self.database_url, run_dir=self.run_dir)
        try:
            self.web.start()  # migrates, starts gunicorn, waits for every worker's warm-up
        finally:
            if self.web.proc is not None:
                self.pids.add(self.web.proc.pid)
        self.start_worker()
        self.start_beat()
        log(f"stack ready: gunicorn {self.web.url} ({WEB_CONCURRENCY} workers), Celery worker + beat")

    def start_beat(self) -> None:
        self.beat = self._own(
            Proc(
                "celery-beat",
                [
                    python_bin(),
                    "-m",
                    "celery",
                    "-A",
                    "velro",
                    "beat",
                    "--loglevel=INFO",
                    "-s",
                    str(self.run_dir / "celerybeat-schedule"),
                ],
                env=self.env,
                log_path=self.run_dir / "celery-beat.log",
            )
        )
        self.beat.start()
        self.beat.wait_log("beat: Starting", timeout=PROCESS_READY_TIMEOUT)

    def start_worker(self) -> None:
        self.worker_generation += 1
        self.worker = self._own(
            Proc(
                "celery-worker",
                [
                    python_bin(),
                    "-m",
                    "celery",
                    "-A",
                    "velro",
                    "worker",
                    "--pool=prefork",
                    f"--concurrency={CELERY_CONCURRENCY}",
                    "--loglevel=INFO",
                    "--without-heartbeat",
                    "--without-mingle",
                    "--without-gossip",
                    "-Q",
                    "celery",
                    "-n",
                    f"drill{self.worker_generation}-{os.getpid()}@%h",
                ],
                env=self.env,
                log_path=self.run_dir / "celery-worker.log",
            )
        )
        self.worker.start()
        self.worker.wait_log(" ready.", timeout=PROCESS_READY_TIMEOUT)

    def revive(self) -> list[str]:
        """After a fault window: whatever is not running should be. A dead
        process is a violation of the window it died in; it is restarted (as
        docker-compose's restart policy would) so the next faults still run."""
        problems = []

        def why(proc: Proc) -> str:
            lines = [
                line
                for line in proc.current_log().splitlines()
                if re.search(r"Unrecoverable error|CRITICAL|Traceback|Error", line)
            ]
            return f": {lines[-1].strip()[:240]}" if lines else ""

        for proc, restart in ((self.worker, self.start_worker), (self.beat, self.start_beat)):
            if proc is not None and not proc.alive:
                reason = why(proc)
                # kombu 5.7 can crash a worker while restoring unacked messages on
                # a broker connection loss (upstream bug). Supervised (restarted
                # here, as docker-compose does) it loses nothing: the invariants
                # below still have to hold, so it is reported, not failed.
                known = KNOWN_UPSTREAM if KOMBU_RESTORE_CRASH in reason else ""
                problems.append(f"{known}{proc.name} exited (status {proc.proc.returncode}){reason}; restarted")
                restart()
        for server in (self.cache, self.broker):
            if server is not None and not server.alive:
                problems.append(f"{server.name} not running; restarted")
                server.start()
        if self.web is not None:
            if self.web.proc is None or self.web.proc.poll() is not None:
                problems.append("gunicorn master exited")
            elif len(self.web.worker_pids()) < WEB_CONCURRENCY:
                problems.append(f"gunicorn runs {len(self.web.worker_pids())} of {WEB_CONCURRENCY} workers")
        return problems

    def processes(self) -> dict[str, bool]:
        return {
            "gunicorn": bool(self.web and self.web.proc and self.web.proc.poll() is None),
            "gunicorn_workers": len(self.web.worker_pids()) if self.web else 0,
            "celery_worker": bool(self.worker and self.worker.alive),
            "celery_beat": bool(self.beat and self.beat.alive),
            "redis_cache": bool(self.cache and self.cache.alive),
            "redis_broker": bool(self.broker and self.broker.alive),
        }

    def close(self) -> None:
        for proc in (self.beat, self.worker):
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.stop()
        if self.web is not None:
            with contextlib.suppress(Exception):
                self.web.stop()
        for server in (self.cache, self.broker):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
        if self.smtp is not None:
            self.smtp.stop()
        self.pids.clear()
        if self.db_created and not self.keep:
            database_drop(self.database)
            log(f"database {self.database} dropped")


# --- faults -------------------------------------------------------------------------------------


class Fault:
    """inject() at the start of the window, restore() at its end; both blocking (run in a thread).

    `clock()` is the traffic clock (seconds since traffic start): the marks a
    fault records (`*_at_s`) are on the same axis as the requests' send and
    answer times, so a request can be matched to the exact fault instant.
    """

    name = ""

    def __init__(self, stack: Stack, clock: Callable[[], float]) -> None:
        self.stack = stack
        self.clock = clock
        self.detail: dict[str, Any] = {}

    def mark(self, name: str) -> None:
        self.detail[f"{name}_at_s"] = round(self.clock(), 3)

    def inject(self) -> None:
        raise NotImplementedError

    def restore(self) -> None:
        raise NotImplementedError


class RedisStop(Fault):
    def __init__(self, stack: Stack, clock: Callable[[], float], which: str) -> None:
        super().__init__(stack, clock)
        self.name = f"{which}_redis"
        self.which = which

    @property
    def server(self) -> RedisServer:
        return self.stack.cache if self.which == "cache" else self.stack.broker

    def inject(self) -> None:
        server = self.server
        with contextlib.suppress(redis.RedisError):
            client = server.client()
            if self.which == "broker":
                # Messages the restart (no persistence) throws away: the sweeper's work.
                self.detail["messages_lost"] = int(client.llen("celery")) + int(client.zcard("unacked_index"))
            else:
                self.detail["keys_lost"] = int(client.dbsize())
            client.close()
        self.mark("stopped")
        server.stop()
        self.detail["port"] = server.port

    def restore(self) -> None:
        self.server.start()
        self.mark("restarted")


class DatabaseStall(Fault):
    name = "db_stall"
    SQL = "LOCK TABLE auth_users IN ACCESS EXCLUSIVE MODE"

    def __init__(self, stack: Stack, clock: Callable[[], float]) -> None:
        super().__init__(stack, clock)
        self.conn: psycopg.Connection | None = None

    def inject(self) -> None:
        self.conn = pg_connect(self.stack.database, autocommit=False)
        self.conn.execute("SET lock_timeout = '10s'")
        self.mark("lock_requested")
        self.conn.execute(self.SQL)
        self.mark("locked")
        self.detail["held"] = self.SQL

    def restore(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.rollback()
            self.conn.close()
            self.conn = None
        self.mark("released")


class CeleryWorkerKill(Fault):
    name = "celery_worker"

    def inject(self) -> None:
        # Wait (bounded) for a moment when messages are delivered but not acked.
        client = self.stack.broker.client()
        unacked = 0
        deadline = time.monotonic() + 5
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.RedisError):
                    unacked = int(client.zcard("unacked_index"))
                if unacked:
                    break
                time.sleep(0.01)
        finally:
            client.close()
        worker = self.stack.worker
        self.detail.update({"killed_pid": worker.pid, "unacked_at_kill": unacked, "alive_before_kill": worker.alive})
        self.mark("killed")
        worker.kill()

    def restore(self) -> None:
        self.stack.start_worker()
        self.mark("new_worker_ready")
        self.detail["new_pid"] = self.stack.worker.pid


class GunicornWorkerKill(Fault):
    name = "gunicorn_worker"

    def inject(self) -> None:
        web = self.stack.web
        pids = web.worker_pids()
        if not pids:
            raise DrillError("no gunicorn worker to kill")
        victim = random.choice(pids)
        self.detail.update({"workers_before": pids, "killed_pid": victim})
        self.mark("killed")
        os.kill(victim, signal.SIGKILL)

    def restore(self) -> None:
        web = self.stack.web
        victim = self.detail.get("killed_pid")
        deadline = time.monotonic() + PROCESS_READY_TIMEOUT
        while True:
            pids = web.worker_pids()
            fresh = [pid for pid in pids if pid not in self.detail["workers_before"]]
            text = web._log_text()
            warmed = fresh and all(re.search(rf"\[{pid}\] \[INFO\] (worker warmed up|warm-up)", text) for pid in fresh)
            if len(pids) >= WEB_CONCURRENCY and victim not in pids and warmed:
                break
            if time.monotonic() > deadline:
                raise DrillError(f"gunicorn did not replace worker {victim} within {PROCESS_READY_TIMEOUT:g} s: {pids}")
            time.sleep(0.1)
        self.mark("replacement_ready")
        self.detail["workers_after"] = pids


def make_fault(name: str, stack: Stack, clock: Callable[[], float]) -> Fault:
    if name == "cache_redis":
        return RedisStop(stack, clock, "cache")
    if name == "broker_redis":
        return RedisStop(stack, clock, "broker")
    if name == "db_stall":
        return DatabaseStall(stack, clock)
    if name == "celery_worker":
        return CeleryWorkerKill(stack, clock)
    if name == "gunicorn_worker":
        return GunicornWorkerKill(stack, clock)
    raise DrillError(f"unknown fault {name!r}")


# --- traffic ------------------------------------------------------------------------------------


@dataclass
class Record:
    phase: str
    stage: str  # baseline / fault / recovery
    op: str
    t: float  # seconds since traffic start, when sent
    done: float  # seconds since traffic start, when answered (or given up)
    status: int  # 0: no answer
    latency_ms: float
    server_ms: float | None  # the server's own time (Server-Timing total): the rest is queueing + network
    retry_after: str | None
    error: str | None
    body: str | None = None  # the start of an error answer (>= 400)


@dataclass
class Signup:
    email: str
    status: int
    code_sent: str | None
    user_id: str | None = None
    phase: str = ""


_BOX: contextvars.ContextVar[dict | None] = contextvars.ContextVar("drill_response", default=None)


async def _capture_response(response: httpx.Response) -> None:
    """httpx response hook: the headers make_scenario's Sample does not keep."""
    box = _BOX.get()
    if box is not None:
        box["retry_after"] = response.headers.get("retry-after")
        if response.status_code >= 400:
            await response.aread()
            box["body"] = response.text[:300]


class Traffic:
    """Open-loop mixed traffic: request i is sent at t0 + i/rps, whatever happened before."""

    def __init__(self, url: str, *, rps: float, max_requests: int, seed: int) -> None:
        self.url = bench.check_target(url)
        self.rps = rps
        self.max_requests = max_requests
        self.rng = random.Random(seed)
        self.run_id = secrets.token_hex(3)
        self.phase = "setup"
        self.stage = "setup"
        self.records: list[Record] = []
        self.signups: list[Signup] = []
        self.codes: list[str] = []
        self.unknown_codes: set[str] = set()
        self.skipped: Counter[str] = Counter()
        self.inflight: dict[int, float] = {}  # request number -> send time (traffic clock)
        self.sent = 0
        self.t0 = time.monotonic()
        self.t0_wall = time.time()
        self.client: httpx.AsyncClient | None = None
        self.pools: bench.Pools | None = None
        self.ops: dict[str, Callable[[], Awaitable[bench.Sample]]] = {}

    async def __aenter__(self) -> Traffic:
        self.client = httpx.AsyncClient(
            base_url=self.url,
            timeout=bench.REQUEST_TIMEOUT,
            trust_env=False,
            headers={"User-Agent": "velro-drill/1"},
            limits=httpx.Limits(max_connections=400, max_keepalive_connections=50),
            event_hooks={"response": [_capture_response]},
        )
        self.pools = bench.Pools(users=[], refresh=asyncio.Queue())
        self.ops = {name: bench.make_scenario(name, self.client, self.pools) for name in ("login", "refresh", "me")}
        self.ops["signup"] = self.signup
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    def _code(self) -> str | None:
        if not self.codes:
            return None
        if self.rng.random() < UNKNOWN_CODE_SHARE:
            code = "".join(self.rng.choice(CROCKFORD) for _ in range(8))
            self.unknown_codes.add(code)
            return code
        return self.rng.choice(self.codes)

    async def signup(self) -> bench.Sample:
        index = len(self.signups)
        user = bench.BenchUser(
            email=f"drill-{self.run_id}-{index}@example.com",
            password="".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(24)) + "#",
        )
        code = self._code()
        entry = Signup(email=user.email, status=0, code_sent=code, phase=self.phase)
        self.signups.append(entry)
        body: dict[str, Any] = {"email": user.email, "password": user.password}
        if code is not None:
            body["referral_code"] = code
        sample, response = await bench.timed_request(self.client, "POST", f"{API}/signup", json=body)
        entry.status = sample.status
        data = bench._json(response)
        if sample.status == 201:
            entry.user_id = (data.get("user") or {}).get("id")
            user.access_token = data.get("access_token") or ""
            self.pools.users.append(user)
            if isinstance(data.get("refresh_token"), str):
                self.pools.refresh.put_nowait((len(self.pools.users) - 1, data["refresh_token"]))
            own = (data.get("user") or {}).get("referral_code")
            if isinstance(own, str):
                self.codes.append(own)
        return sample

    async def seed(self, count: int) -> None:
        for _ in range(count):
            sample = await self.signup()
            if sample.status != 201:
                raise DrillError(f"seed signup failed: status {sample.status} {sample.error or ''}")

    def _pick(self) -> str:
        op = self.rng.choices([name for name, _ in MIX], weights=[weight for _, weight in MIX])[0]
        if op == "refresh" and self.pools.refresh.empty():
            # Nothing to refresh right now (tokens are used once): don't send a
            # request that would only wait client-side.
            self.skipped["refresh->me"] += 1
            op = "me"
        return op

    def oldest_in_flight(self) -> float:
        """Age (s) of the oldest request still waiting for its answer; 0 when none."""
        if not self.inflight:
            return 0.0
        return time.monotonic() - self.t0 - min(self.inflight.values())

    async def drained(self, *, below: float = 1.0, timeout: float = 30.0) -> float:
        """Wait (bounded) until the server keeps up again: no request older than `below` s
        is waiting. Returns the seconds waited."""
        started = time.monotonic()
        while self.oldest_in_flight() > below and time.monotonic() - started < timeout:
            await asyncio.sleep(0.1)
        return round(time.monotonic() - started, 2)

    async def _one(self) -> None:
        op = self._pick()
        phase, stage = self.phase, self.stage
        sent_at = time.monotonic() - self.t0
        number = self.sent = self.sent + 1
        self.inflight[number] = sent_at
        box: dict[str, Any] = {}
        _BOX.set(box)
        try:
            sample = await self.ops[op]()
        finally:
            del self.inflight[number]
        self.records.append(
            Record(
                phase=phase,
                stage=stage,
                op=op,
                t=round(sent_at, 3),
                done=round(sent_at + sample.latency_ms / 1000, 3),
                status=sample.status,
                latency_ms=round(sample.latency_ms, 2),
                server_ms=None if sample.server_ms is None else round(sample.server_ms, 2),
                retry_after=box.get("retry_after"),
                error=sample.error,
                body=box.get("body"),
            )
        )

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self.t0, self.t0_wall = time.monotonic(), time.time()
        start = loop.time()
        tasks: set[asyncio.Task] = set()
        i = 0
        while not stop.is_set() and i < self.max_requests:
            delay = start + i / self.rps - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    break
            task = asyncio.create_task(self._one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if i >= self.max_requests:
            log(f"request cap reached ({self.max_requests}): traffic stopped early")
        if tasks:
            await asyncio.gather(*tasks)  # each bounded by the 5 s request timeout


# --- evaluation ---------------------------------------------------------------------------------


@dataclass
class Exposure:
    """When the faults that excuse an answer were in effect (traffic clock, seconds)."""

    stalls: list[tuple[float, float]] = field(default_factory=list)  # auth_users locked
    kills: list[float] = field(default_factory=list)  # a gunicorn worker SIGKILLed

    SLACK = 0.05
    # After a stalled query a web process fails fast (503 + Retry-After) for
    # DB_BREAKER_COOLDOWN_SECONDS instead of queueing behind the stall
    # (velro.db.DatabaseBreaker): those 503s belong to the stall too.
    BREAKER_COOLDOWN = 1.0

    def during_stall(self, r: Record) -> bool:
        return any(
            r.t <= end + self.BREAKER_COOLDOWN + self.SLACK and r.done >= start - self.SLACK
            for start, end in self.stalls
        )

    def in_flight_at_kill(self, r: Record) -> bool:
        return any(r.t - self.SLACK <= kill <= r.done + self.SLACK for kill in self.kills)


def summarize_phase(
    name: str, records: list[Record], exposure: Exposure, process_problems: Sequence[str] = ()
) -> dict[str, Any]:
    """One fault window: the requests sent in it, what they got, what broke the contract.

    A 503 is allowed (with Retry-After) only for a request that was in flight
    while the database was stalled (or sent within the database breaker's
    cooldown right after it); a dropped connection only for a request
    that was in flight (or queued) on the gunicorn worker at the moment it was
    killed. A timeout (no answer within 5 s), any 4xx to these valid requests
    and any other 5xx are violations wherever they happen; so is a process of
    the stack that is not running at the end of the window (and was not
    brought back by the fault's own restore).
    """
    statuses = Counter(r.status for r in records)
    latencies = [r.latency_ms for r in records]
    ok = sum(1 for r in records if 200 <= r.status < 300)
    client_errors = [r for r in records if 400 <= r.status < 500]
    unavailable = [r for r in records if r.status == 503]
    unavailable_bare = [r for r in unavailable if not r.retry_after]
    unavailable_excused = [r for r in unavailable if r.retry_after and exposure.during_stall(r)]
    unavailable_outside = [r for r in unavailable if r.retry_after and not exposure.during_stall(r)]
    other_5xx = [r for r in records if r.status >= 500 and r.status != 503]
    no_answer = [r for r in records if r.status == 0]
    timeouts = [r for r in no_answer if r.error == "timeout"]
    dropped = [r for r in no_answer if r.error != "timeout"]
    dropped_excused = [r for r in dropped if exposure.in_flight_at_kill(r)]
    dropped_other = [r for r in dropped if not exposure.in_flight_at_kill(r)]

    def describe(rows: list[Record]) -> str:
        return ", ".join(f"{n}x {key}" for key, n in Counter(f"{r.op} {r.error or r.status}" for r in rows).items())

    violations: list[str] = [p for p in process_problems if not p.startswith(KNOWN_UPSTREAM)]
    upstream = [p for p in process_problems if p.startswith(KNOWN_UPSTREAM)]
    if other_5xx:
        violations.append(f"{len(other_5xx)} other 5xx ({describe(other_5xx)})")
    if unavailable_bare:
        violations.append(f"{len(unavailable_bare)} 503 without Retry-After ({describe(unavailable_bare)})")
    if unavailable_outside:
        violations.append(
            f"{len(unavailable_outside)} 503 outside the database stall ({describe(unavailable_outside)})"
        )
    if client_errors:
        violations.append(f"{len(client_errors)} 4xx to valid requests ({describe(client_errors)})")
    if timeouts:
        violations.append(f"{len(timeouts)} unanswered within {bench.REQUEST_TIMEOUT:g} s ({describe(timeouts)})")
    if dropped_other:
        violations.append(f"{len(dropped_other)} connections dropped ({describe(dropped_other)})")
    notes = list(upstream)
    if unavailable_excused:
        notes.append(f"{len(unavailable_excused)} 503 + Retry-After during the stall")
    if dropped_excused:
        notes.append(f"{len(dropped_excused)} in flight on the killed worker: connection dropped")
    by_op = {}
    for op in sorted({r.op for r in records}):
        rows = [r for r in records if r.op == op]
        by_op[op] = {
            "sent": len(rows),
            "status_counts": {str(k): v for k, v in sorted(Counter(r.status for r in rows).items())},
            "worst_ms": round(max(r.latency_ms for r in rows), 1),
            "p50_ms": bench._r(bench.percentile([r.latency_ms for r in rows], 50), 1),
            "p95_ms": bench._r(bench.percentile([r.latency_ms for r in rows], 95), 1),
        }
    return {
        "fault": name,
        "title": FAULT_TITLES.get(name, name),
        "sent": len(records),
        "2xx": ok,
        "4xx": len(client_errors),
        "503": len(unavailable),
        "503_without_retry_after": len(unavailable_bare),
        "503_outside_stall": len(unavailable_outside),
        "other_5xx": len(other_5xx),
        "no_answer": len(no_answer),
        "timeouts": len(timeouts),
        "dropped_in_flight_at_kill": len(dropped_excused),
        "worst_ms": round(max(latencies), 1) if latencies else None,
        "p50_ms": bench._r(bench.percentile(latencies, 50), 1),
        "p95_ms": bench._r(bench.percentile(latencies, 95), 1),
        "server_p50_ms": bench._r(bench.percentile([r.server_ms for r in records if r.server_ms is not None], 50), 1),
        "server_worst_ms": max((r.server_ms for r in records if r.server_ms is not None), default=None),
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(Counter(r.error for r in records if r.error)),
        "by_op": by_op,
        "violations": violations,
        "notes": notes,
        "ok": not violations,
    }


def _inv(name: str, ok: bool, summary: str, **detail: Any) -> dict[str, Any]:
    return {"name": name, "ok": ok, "summary": summary, **detail}


def work_pending(database: str) -> dict[str, int]:
    with pg_connect(database, autocommit=True) as conn:
        row = conn.execute(
            """
            SELECT
              (SELECT count(*) FROM referral_intents WHERE status = 'pending'),
              (SELECT count(*) FROM referrals WHERE status = 'pending' AND referrer_id IS NOT NULL),
              (SELECT count(*) FROM email_notifications WHERE status = 'pending'
                 OR (status = 'sending' AND smtp_started_at IS NULL)),
              (SELECT count(*) FROM email_notifications WHERE status = 'sending')
            """
        ).fetchone()
    return {"intents": row[0], "referrals": row[1], "emails_pending": row[2], "emails_sending": row[3]}


async def settle(stack: Stack, *, timeout: float) -> dict[str, Any]:
    """Wait (bounded) until no work is pending and the SMTP listener is quiet."""
    started = time.monotonic()
    last_mails = -1
    quiet = 0
    pending: dict[str, int] = {}
    while True:
        try:
            pending = await asyncio.to_thread(work_pending, stack.database)
        except psycopg.Error as exc:
            pending = {"error": str(exc)}
        mails = len(stack.smtp.sink.snapshot())
        idle = pending.get("intents") == 0 and pending.get("referrals") == 0 and pending.get("emails_pending") == 0
        quiet = quiet + 1 if idle and mails == last_mails else 0
        last_mails = mails
        elapsed = time.monotonic() - started
        if quiet >= 3:
            return {"settled": True, "seconds": round(elapsed, 1), "pending": pending}
        if elapsed > timeout:
            return {"settled": False, "seconds": round(elapsed, 1), "pending": pending}
        await asyncio.sleep(1.0)


def check_invariants(stack: Stack, traffic: Traffic, timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with pg_connect(stack.database, autocommit=True) as conn:
        users = {
            row[0]: {"email": row[1], "mirror_id": row[2], "mirror_email": row[3]}
            for row in conn.execute(
                "SELECT u.id::text, u.email, m.id::text, m.email FROM auth_users u LEFT JOIN users m ON m.id = u.id"
            )
        }
        intents = [
            {"id": row[0], "referred": row[1], "code": row[2], "status": row[3], "owner": row[4]}
            for row in conn.execute(
                "SELECT i.id, i.referred_id::text, i.code, i.status, rc.user_id::text"
                " FROM referral_intents i LEFT JOIN referral_codes rc ON rc.code = upper(i.code)"
            )
        ]
        referrals = {
            row[1]: {"id": row[0], "referrer": row[2], "status": row[3], "reason": row[4]}
            for row in conn.execute(
                "SELECT id::text, referred_id::text, referrer_id::text, status, reason FROM referrals"
            )
        }
        referral_rows = conn.execute("SELECT count(*) FROM referrals").fetchone()[0]
        counters = {row[0]: row[1] for row in conn.execute("SELECT user_id::text, credited_count FROM referral_codes")}
        notifications = {
            row[0]: {
                "status": row[1],
                "recipient": row[2],
                "attempts": row[3],
                "last_error": row[4],
                "created": None if row[5] is None else phase_at(float(row[5]) - traffic.t0_wall, timeline),
                "claimed": None if row[6] is None else phase_at(float(row[6]) - traffic.t0_wall, timeline),
            }
            for row in conn.execute(
                "SELECT n.event_key, n.status, u.email, n.attempts, n.last_error,"
                " extract(epoch FROM n.created_at), extract(epoch FROM n.claimed_at)"
                " FROM email_notifications n JOIN auth_users u ON u.id = n.recipient_id"
            )
        }

    # 1. every signup answered 201 is there, with its mirror row
    created = [s for s in traffic.signups if s.status == 201]
    missing = [s.email for s in created if s.user_id not in users]
    no_mirror = [
        s.email
        for s in created
        if s.user_id in users
        and (users[s.user_id]["mirror_id"] is None or users[s.user_id]["mirror_email"] != users[s.user_id]["email"])
    ]
    extra = len(users) - len(created)
    results.append(
        _inv(
            "signups_present",
            not missing and not no_mirror,
            f"{len(created)} signups answered 201: {len(created) - len(missing)} users present, "
            f"{len(no_mirror)} without a matching mirror row"
            + (f" ({extra} more users committed whose answer the client never saw)" if extra > 0 else ""),
            missing=missing[:20],
            without_mirror=no_mirror[:20],
            users_in_db=len(users),
        )
    )

    # 2. every 201 signup with a code has its intent
    intent_by_referred = {i["referred"]: i for i in intents}
    no_intent = [s.email for s in created if s.code_sent and s.user_id not in intent_by_referred]
    results.append(
        _inv(
            "intents_recorded",
            not no_intent,
            f"{sum(1 for s in created if s.code_sent)} signups with a code answered 201: "
            f"{len(no_intent)} without an intent row",
            missing=no_intent[:20],
        )
    )

    # 3. every intent processed, one Referral each, credited iff its code was valid
    unprocessed = [i["id"] for i in intents if i["status"] != "done"]
    valid = [i for i in intents if i["owner"] and i["owner"] != i["referred"]]
    invalid = [i for i in intents if not (i["owner"] and i["owner"] != i["referred"])]
    no_referral = [i["id"] for i in intents if i["referred"] not in referrals]
    wrong = [
        i["id"]
        for i in valid
        if i["referred"] in referrals
        and (referrals[i["referred"]]["status"] != "credited" or referrals[i["referred"]]["referrer"] != i["owner"])
    ]
    wrongly_credited = [
        i["id"] for i in invalid if i["referred"] in referrals and referrals[i["referred"]]["status"] != "rejected"
    ]
    orphans = [k for k in referrals if k not in intent_by_referred]
    credited = {v["id"]: v for v in referrals.values() if v["status"] == "credited"}
    ok = not (unprocessed or no_referral or wrong or wrongly_credited or orphans) and referral_rows == len(intents)
    results.append(
        _inv(
            "referrals_credited_once",
            ok,
            f"{len(intents)} intents ({len(valid)} valid codes, {len(invalid)} unknown): "
            f"{len(unprocessed)} unprocessed, {referral_rows} Referral rows, {len(credited)} credited, "
            f"{len(no_referral)} missing, {len(wrong)} valid but not credited to the code's owner, "
            f"{len(wrongly_credited)} invalid but not rejected",
            unprocessed=unprocessed[:20],
            missing=no_referral[:20],
            not_credited=wrong[:20],
            invalid_not_rejected=wrongly_credited[:20],
            without_intent=orphans[:20],
        )
    )

    # 4. credited_count == credited referrals, for every referrer (no double credit)
    per_referrer = Counter(v["referrer"] for v in credited.values())
    drift = {
        user_id: {"credited_count": count, "credited_referrals": per_referrer.get(user_id, 0)}
        for user_id, count in counters.items()
        if count != per_referrer.get(user_id, 0)
    }
    results.append(
        _inv(
            "credited_counts_match",
            not drift,
            f"{len(counters)} referral codes: sum(credited_count) = {sum(counters.values())}, "
            f"credited referrals = {len(credited)}, {len(drift)} counters off",
            drift=dict(list(drift.items())[:20]),
        )
    )

    # 5. every expected email recorded and delivered exactly once, to the right address
    expected: dict[str, str] = {f"welcome:{uid}": u["email"].lower() for uid, u in users.items()}
    for referral_id, referral in credited.items():
        expected[f"referral_credited:{referral_id}"] = users.get(referral["referrer"], {}).get("email", "").lower()
    mails = stack.smtp.sink.snapshot()
    delivered = Counter(m.event for m in mails)
    not_recorded = sorted(set(expected) - set(notifications))
    never_delivered = sorted(key for key in expected if delivered[key] == 0)
    duplicates = {key: n for key, n in delivered.items() if n > 1}
    unexpected = sorted(str(key) for key in delivered if key not in expected)
    misaddressed = sorted({m.event for m in mails if m.event in expected and m.recipients != [expected[m.event]]})
    lost_detail = {key: notifications.get(key, {"status": "no row"}) for key in never_delivered[:20]}
    results.append(
        _inv(
            "emails_delivered_once",
            not (not_recorded or never_delivered or duplicates or unexpected or misaddressed),
            f"{len(expected)} emails expected ({sum(1 for k in expected if k.startswith('welcome:'))} welcome, "
            f"{len(credited)} referral): {len(mails)} received, {len(never_delivered)} never delivered, "
            f"{len(duplicates)} duplicated, {len(unexpected)} unexpected, {len(misaddressed)} misaddressed",
            never_delivered=lost_detail,
            not_recorded=not_recorded[:20],
            duplicates=dict(list(duplicates.items())[:20]),
            unexpected=unexpected[:20],
            misaddressed=misaddressed[:20],
            notification_status=dict(Counter(n["status"] for n in notifications.values())),
        )
    )

    # 6. the stack is whole again
    processes = stack.processes()
    whole = all(v for k, v in processes.items() if k != "gunicorn_workers") and (
        processes["gunicorn_workers"] >= WEB_CONCURRENCY
    )
    results.append(
        _inv(
            "processes_alive",
            whole,
            ", ".join(f"{k}={v}" for k, v in processes.items()),
            processes=processes,
        )
    )
    return results


# --- the drill ----------------------------------------------------------------------------------


@dataclass
class Options:
    fault_seconds: float = DEFAULT_FAULT_SECONDS
    recovery_seconds: float = 5.0
    rps: float = DEFAULT_RPS
    faults: list[str] = field(default_factory=lambda: list(FAULTS))
    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    keep: bool = False
    database: str = DEFAULT_DATABASE
    run_dir: Path = DEFAULT_RUN_DIR
    out: Path | None = None
    seed: int = 7
    deadline: float = DEFAULT_DEADLINE


def phase_at(t: float, timeline: list[dict[str, Any]]) -> str:
    """Which window (and stage) a traffic-clock time falls in."""
    where = "baseline"
    for entry in timeline:
        if t >= entry["start_s"]:
            restored = entry.get("restored_s")
            where = f"{entry['fault']} ({'fault' if restored is None or t < restored else 'recovery'})"
    if timeline and t > timeline[-1]["end_s"]:
        where = "after the traffic (settle)"
    return where


LOG_PROBLEM = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback|Soft time limit|Hard time limit|WorkerLostError")
# Expected under the drill's faults: a 503 is logged as an error by Django, a
# dead broker by Celery (worker and beat), the killed worker by gunicorn;
# counted, but not where to look first.
LOG_EXPECTED = re.compile(
    r"Service Unavailable: |Cannot connect to redis|Connection to broker lost|was sent SIGKILL"
    r"|Couldn't apply scheduled task|Couldn't ack"
)


def log_problems(stack: Stack) -> dict[str, list[dict[str, Any]]]:
    """ERROR/CRITICAL lines and time-limit kills in the stack's logs, grouped by message shape."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(stack.run_dir.glob("*.log")):
        counts: Counter[str] = Counter()
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not LOG_PROBLEM.search(line):
                continue
            message = re.sub(r"^\d{4}-\d\d-\d\d \S+ |^\[[^]]*\] ", "", line)
            message = re.sub(r"\[[0-9a-f-]{16,}\]|[0-9a-f]{8}-[0-9a-f-]{27}|\b\d+\b", "#", message)[:160]
            counts[message] += 1
        if counts:
            found[path.name] = [
                {"count": n, "line": line, "expected": bool(LOG_EXPECTED.search(line))}
                for line, n in counts.most_common(25)
            ]
    return found


async def run_drill(stack: Stack, opts: Options) -> dict[str, Any]:
    timeline: list[dict[str, Any]] = []
    fault_errors: list[str] = []
    # Each window may run longer than planned (a restore that waits for a
    # process, the drain wait): the cap leaves room for that, and still bounds.
    planned = opts.fault_seconds + len(opts.faults) * (opts.fault_seconds + opts.recovery_seconds + 30)
    max_requests = min(MAX_REQUESTS_CAP, int(opts.rps * planned * 1.5) + 100)
    async with Traffic(stack.web.url, rps=opts.rps, max_requests=max_requests, seed=opts.seed) as traffic:
        await traffic.seed(SEED_USERS)
        stop = asyncio.Event()
        traffic.phase = traffic.stage = "baseline"
        runner = asyncio.create_task(traffic.run(stop))

        def clock() -> float:
            return time.monotonic() - traffic.t0

        try:
            await asyncio.sleep(opts.fault_seconds)
            for name in opts.faults:
                fault = make_fault(name, stack, clock)
                entry: dict[str, Any] = {"fault": name, "start_s": round(clock(), 3)}
                timeline.append(entry)
                traffic.phase, traffic.stage = name, "fault"
                log(f"fault {name}: {FAULT_TITLES[name]} for {opts.fault_seconds:g} s")
                began = time.monotonic()
                try:
                    await asyncio.to_thread(fault.inject)
                    await asyncio.sleep(max(0.0, opts.fault_seconds - (time.monotonic() - began)))
                    await asyncio.to_thread(fault.restore)
                except DrillError as exc:
                    # The stack did not come back (a process that would not restart...):
                    # a failed drill, but still one worth checking and reporting.
                    fault_errors.append(f"{name}: {exc}")
                    entry["error"] = str(exc)
                entry["restored_s"] = round(clock(), 3)
                traffic.stage = "recovery"
                await asyncio.sleep(opts.recovery_seconds)
                # The next fault starts only once the server keeps up again:
                # a backlog left by this one must not be blamed on the next.
                entry["drain_wait_s"] = await traffic.drained(timeout=DRAIN_TIMEOUT)
                entry["end_s"] = round(clock(), 3)
                backlog = traffic.oldest_in_flight()
                if backlog > 1.0:
                    entry.setdefault("process_problems", []).append(
                        f"not recovered: {DRAIN_TIMEOUT:g} s after the recovery window requests still wait "
                        f"{backlog:.1f} s for an answer"
                    )
                entry.update(fault.detail)
                try:
                    entry.setdefault("process_problems", []).extend(await asyncio.to_thread(stack.revive))
                except DrillError as exc:
                    fault_errors.append(f"{name}: {exc}")
                    entry.setdefault("process_problems", []).append(str(exc))
                if fault_errors or runner.done():
                    break
        finally:
            stop.set()
            await runner
    log("traffic stopped; waiting for the sweeper and redeliveries to finish the work")
    settled = await settle(stack, timeout=opts.settle_seconds)
    log(f"settled in {settled['seconds']} s: {settled['settled']}, pending {settled['pending']}")

    exposure = Exposure(
        stalls=[
            (e["lock_requested_at_s"], e.get("released_at_s", e["end_s"]))
            for e in timeline
            if e["fault"] == "db_stall" and "lock_requested_at_s" in e
        ],
        kills=[e["killed_at_s"] for e in timeline if e["fault"] == "gunicorn_worker" and "killed_at_s" in e],
    )
    problems = {e["fault"]: e.get("process_problems", []) for e in timeline}
    phases = [
        summarize_phase(name, [r for r in traffic.records if r.phase == name], exposure, problems.get(name, []))
        for name in ["baseline", *[e["fault"] for e in timeline]]
    ]
    invariants = await asyncio.to_thread(check_invariants, stack, traffic, timeline)
    if fault_errors:
        invariants.append(_inv("faults_recovered", False, "; ".join(fault_errors)))
    if not settled["settled"]:
        invariants.append(
            _inv("settled", False, f"work still pending after {opts.settle_seconds:g} s: {settled['pending']}")
        )
    return {
        "phases": phases,
        "invariants": invariants,
        "timeline": timeline,
        "settle": settled,
        "signups": {
            "sent": len(traffic.signups),
            "created": sum(1 for s in traffic.signups if s.status == 201),
            "with_unknown_code": sum(1 for s in traffic.signups if s.code_sent in traffic.unknown_codes),
            "not_created": [asdict(s) for s in traffic.signups if s.status != 201][:200],
        },
        "emails_received": len(stack.smtp.sink.snapshot()),
        "requests": len(traffic.records),
        "skipped": dict(traffic.skipped),
        "max_requests": max_requests,
        "log_problems": log_problems(stack),
        "records": [asdict(r) for r in traffic.records],
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        "| fault | sent | 2xx | 4xx | 503 | other 5xx | no answer | p50 ms | worst ms | result |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in result["phases"]:
        verdict = "ok" if p["ok"] else "FAIL: " + "; ".join(p["violations"])
        if p["notes"]:
            verdict += " (" + "; ".join(p["notes"]) + ")"
        lines.append(
            f"| {p['title']} | {p['sent']} | {p['2xx']} | {p['4xx']} | {p['503']} | {p['other_5xx']} "
            f"| {p['no_answer']} | {p['p50_ms'] if p['p50_ms'] is not None else '-'} "
            f"| {p['worst_ms'] if p['worst_ms'] is not None else '-'} | {verdict} |"
        )
    return "\n".join(lines)


def format_invariants(result: dict[str, Any]) -> str:
    lines = []
    for inv in result["invariants"]:
        mark = "ok  " if inv["ok"] else "FAIL"
        lines.append(f"- {mark} {inv['name']}: {inv['summary']}")
        if not inv["ok"]:
            for key, value in inv.items():
                if key not in {"name", "ok", "summary"} and value:
                    lines.append(f"    {key}: {json.dumps(value, default=str)[:1500]}")
    return "\n".join(lines)


def drill(opts: Options) -> dict[str, Any]:
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    started = time.monotonic()
    load_before = bench._loadavg()
    stack = Stack(run_dir=opts.run_dir, database=opts.database, keep=opts.keep)
    with contextlib.ExitStack() as cleanup:
        cleanup.enter_context(database_lock(opts.database))
        cleanup.callback(stack.close)
        stack.start()
        setup_s = time.monotonic() - started

        async def bounded() -> dict[str, Any]:
            async with asyncio.timeout(opts.deadline):
                return await run_drill(stack, opts)

        result = asyncio.run(bounded())
    result.update(
        {
            "started_at": started_at,
            "duration_s": round(time.monotonic() - started, 1),
            "setup_s": round(setup_s, 1),
            "options": {
                "fault_seconds": opts.fault_seconds,
                "recovery_seconds": opts.recovery_seconds,
                "rps": opts.rps,
                "faults": opts.faults,
                "settle_seconds": opts.settle_seconds,
                "database": opts.database,
                "mix": dict(MIX),
                "web_concurrency": WEB_CONCURRENCY,
                "gunicorn_threads": GUNICORN_THREADS,
                "celery_concurrency": CELERY_CONCURRENCY,
                "request_timeout_s": bench.REQUEST_TIMEOUT,
            },
            "machine": bench.machine_info(),
            # The box is shared: a load average above its CPU count means the
            # latencies include waiting for a core, not only the faults.
            "loadavg_before": load_before,
            "loadavg_after": bench._loadavg(),
            "logs": str(opts.run_dir),
        }
    )
    result["ok"] = all(p["ok"] for p in result["phases"]) and all(i["ok"] for i in result["invariants"])
    return result


# --- command line -------------------------------------------------------------------------------


def _faults(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    bad = [name for name in names if name not in FAULTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"--faults: choose among {','.join(FAULTS)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError("--faults: each fault at most once (a window is reported by its name)")
    return names


def _bounded(kind: type, low: float, high: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {kind.__name__}: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not within [{low:g}, {high:g}]")
        return value

    return parse


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description="Velro fault drill: an isolated stack under load, five faults, the contract checked.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--fault-seconds", type=_bounded(float, 1, MAX_FAULT_SECONDS), default=DEFAULT_FAULT_SECONDS)
    parser.add_argument(
        "--recovery-seconds",
        type=_bounded(float, 1, MAX_FAULT_SECONDS),
        default=None,
        help="after each fault (default: half the fault window, at least 3 s)",
    )
    parser.add_argument("--rps", type=_bounded(float, 1, MAX_RPS), default=DEFAULT_RPS, help="open-loop rate, total")
    parser.add_argument("--faults", type=_faults, default=list(FAULTS), help="comma list, in order")
    parser.add_argument("--settle-seconds", type=_bounded(float, 5, 600), default=DEFAULT_SETTLE_SECONDS)
    parser.add_argument("--keep", action="store_true", help="don't drop the drill database at the end")
    parser.add_argument("--database", default=DEFAULT_DATABASE, help="dropped and recreated; must start velro_drill")
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="logs, metrics dir, beat schedule")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default: RUN_DIR/drill.json)")
    parser.add_argument("--seed", type=int, default=7, help="traffic mix / code choice")
    parser.add_argument("--deadline", type=_bounded(float, 30, 3600), default=DEFAULT_DEADLINE, help="seconds")
    args = parser.parse_args(argv)
    recovery = args.recovery_seconds if args.recovery_seconds is not None else max(3.0, args.fault_seconds / 2)
    return Options(
        fault_seconds=args.fault_seconds,
        recovery_seconds=recovery,
        rps=args.rps,
        faults=args.faults,
        settle_seconds=args.settle_seconds,
        keep=args.keep,
        database=args.database,
        run_dir=args.run_dir.resolve(),
        out=(args.out or args.run_dir / "drill.json").resolve(),
        seed=args.seed,
        deadline=args.deadline,
    )


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Ctrl-C must stop the stack even when the shell started us with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        check_database_name(opts.database)
        result = drill(opts)
    except (DrillError, bench.BenchmarkError) as exc:
        print(f"drill: {exc}", file=sys.stderr)
        return 2
    except TimeoutError:
        print(f"drill: over the --deadline of {opts.deadline:g} s", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("drill: interrupted (stack stopped)", file=sys.stderr)
        return 130
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(format_table(result))
    print()
    print(format_invariants(result))
    print()
    print(
        f"{'PASS' if result['ok'] else 'FAIL'}: {result['requests']} requests at {opts.rps:g} RPS, "
        f"{result['signups']['created']} signups, {result['emails_received']} emails, "
        f"{result['duration_s']} s in all (setup {result['setup_s']} s, settle {result['settle']['seconds']} s); "
        f"load average {result['loadavg_before']} -> {result['loadavg_after']} on {result['machine']['nproc']} CPUs"
    )
    unexpected = [
        f"  {name}: {entry['count']}x {entry['line']}"
        for name, entries in result["log_problems"].items()
        for entry in entries
        if not entry["expected"]
    ]
    if unexpected:
        print("Log lines worth a look (ERROR/CRITICAL/time limits not explained by the faults):")
        print("\n".join(unexpected[:15]))
    print(f"JSON: {opts.out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
