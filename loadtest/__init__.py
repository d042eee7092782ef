"""Velro's load tests: the perf benchmark and the fault drill, and what they share.

    python -m loadtest.benchmark --duration 5      # the auth hot path: latency, throughput, argon2id floor
    python -m loadtest.drill                       # five faults under load; the failure contract checked

Layout:

- `supervisor`: one process supervisor (a process in its own process group with
  a log file: start, wait until ready, stop with SIGTERM then SIGKILL to the
  group), also used by the integration tests (velro/tests/support.py);
- `stack`: the stack starter: a PostgreSQL database (created, migrated, dropped),
  private redis-servers on free ports, an SMTP listener, gunicorn, a Celery
  worker and beat;
- `loadgen`: the open-loop load generator (and the closed loop) over httpx;
- `machine`: what the reports say about the box they ran on;
- `benchmark`: the perf benchmark;
- `drill`: the fault drill: `faults`, `traffic`, `invariants`, `report`, `run`.

It is not a Django app: it drives the service from outside, over HTTP, and
reads PostgreSQL directly to check the drill's invariants.
"""

from __future__ import annotations

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


class LoadTestError(RuntimeError):
    """A load test cannot run: a bad target or argument, a stack that would not start."""
