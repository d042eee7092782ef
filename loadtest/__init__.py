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
- `loadgen`: the open-loop load generator (and the closed loop) over httpx (the drill's);
- `rawload`: the benchmark's open-loop generator on raw asyncio streams (thousands
  of kept-alive connections, latency from the scheduled send, worker processes);
- `wrk`: closed-loop saturation runs with wrk and a generated Lua script;
- `peerstack`: the benchmark's stock peer (loadtest/peer/: Django + DRF + simplejwt,
  own venv var/peer-venv, gunicorn -w 2);
- `proxy`: deploy/nginx/velro.conf under a private nginx master, in front of gunicorn;
- `machine`: what the reports say about the box they ran on;
- `benchmark`: the perf benchmark (Velro vs the stock peer and the argon2id floor);
- `drill`: the fault drill: `faults`, `traffic`, `invariants`, `report`, `run`.

It is not a Django app: it drives the service from outside, over HTTP, and
reads PostgreSQL directly to check the drill's invariants.
"""

from __future__ import annotations

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


class LoadTestError(RuntimeError):
    """A load test cannot run: a bad target or argument, a stack that would not start."""
