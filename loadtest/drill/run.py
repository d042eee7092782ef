"""The drill itself: its stack, the fault loop under traffic, the evaluation, the command line.

python -m loadtest.drill --help
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtest import BASE_DIR, LoadTestError
from loadtest.drill import CELERY_CONCURRENCY, GUNICORN_THREADS, WEB_CONCURRENCY, DrillError, log
from loadtest.drill.faults import FAULT_TITLES, FAULTS, make_fault, revive
from loadtest.drill.invariants import Exposure, check_invariants, invariant, settle, summarize_phase
from loadtest.drill.report import format_invariants, format_summary, format_table, log_problems
from loadtest.drill.traffic import MIX, Traffic
from loadtest.loadgen import REQUEST_TIMEOUT
from loadtest.machine import loadavg, machine_info
from loadtest.stack import Stack

DRAIN_TIMEOUT = 30.0  # seconds after a recovery window for the backlog to clear
SEED_USERS = 3

PG_HOST, PG_PORT, PG_ROLE = "127.0.0.1", 5432, "root"
DEFAULT_DATABASE = "velro_drill"
DEFAULT_RUN_DIR = BASE_DIR / "var" / "drill"

DEFAULT_FAULT_SECONDS = 10.0
DEFAULT_RPS = 20.0
DEFAULT_SETTLE_SECONDS = 90.0
DEFAULT_DEADLINE = 900.0
MAX_RPS = 200.0
MAX_FAULT_SECONDS = 120.0
MAX_REQUESTS_CAP = 50_000

# The drill's settings for web, worker and beat: its sizes, and short sweeper,
# visibility, time-limit and breaker timings, so each fault window sees recovery.
DRILL_ENV = {
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
}


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


# --- the stack ----------------------------------------------------------------------------------


def check_database_name(name: str) -> str:
    # The drill drops this database: only names of its own family are accepted.
    if not re.fullmatch(r"velro_drill[A-Za-z0-9_]{0,40}", name):
        raise DrillError(f"--database {name!r}: the drill drops it, so it must start with 'velro_drill'")
    return name


@contextlib.contextmanager
def database_lock(name: str) -> Iterator[None]:
    """One drill per database at a time (the drill drops it)."""
    path = Path(tempfile.gettempdir()) / f"velro-{name}.lock"
    with path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DrillError(f"another drill is running on database {name} (lock {path})") from None
        yield


def make_stack(opts: Options) -> Stack:
    """The drill's isolated stack: fresh database, private redis-servers, SMTP, gunicorn, worker, beat."""
    return Stack(
        run_dir=opts.run_dir,
        database_url=f"postgres://{PG_ROLE}@{PG_HOST}:{PG_PORT}/{check_database_name(opts.database)}",
        fresh_database=True,
        drop_database=not opts.keep,
        private_redis=True,
        smtp=True,
        celery=True,
        env=DRILL_ENV,
        celery_concurrency=CELERY_CONCURRENCY,
    )


# --- the drill ----------------------------------------------------------------------------------


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
                except LoadTestError as exc:
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
                    entry.setdefault("process_problems", []).extend(await asyncio.to_thread(revive, stack))
                except LoadTestError as exc:
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
        invariants.append(invariant("faults_recovered", False, "; ".join(fault_errors)))
    if not settled["settled"]:
        invariants.append(
            invariant("settled", False, f"work still pending after {opts.settle_seconds:g} s: {settled['pending']}")
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
        "log_problems": log_problems(stack.run_dir),
        "records": [asdict(r) for r in traffic.records],
    }


def drill(opts: Options) -> dict[str, Any]:
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    started = time.monotonic()
    load_before = loadavg()
    stack = make_stack(opts)
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
                "request_timeout_s": REQUEST_TIMEOUT,
            },
            "machine": machine_info(),
            # The box is shared: a load average above its CPU count means the
            # latencies include waiting for a core, not only the faults.
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
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
        prog="python -m loadtest.drill",
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
    except LoadTestError as exc:
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
    print(format_summary(result, rps=opts.rps))
    print(f"JSON: {opts.out}")
    return 0 if result["ok"] else 1
