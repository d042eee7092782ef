"""Gunicorn settings for Velro (used by scripts/run.sh, the Dockerfile and docker-compose.yml).

Tunable from the environment: BIND, WEB_CONCURRENCY (worker processes),
GUNICORN_THREADS (threads per worker), GUNICORN_LOGLEVEL.
"""

import multiprocessing
import os
from typing import Any


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"gunicorn.conf.py: {name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SystemExit(f"gunicorn.conf.py: {name}={raw!r} must be >= {minimum}")
    return value


bind = os.environ.get("BIND", "127.0.0.1:8000")

# The usual 2 x cores + 1, capped: every worker thread may hold its own
# PostgreSQL connection (CONN_MAX_AGE) and Redis pool, so a 32-core box must not
# open 65 x threads connections by default. Scale out with more machines, or
# set WEB_CONCURRENCY explicitly.
workers = _env_int("WEB_CONCURRENCY", min(multiprocessing.cpu_count() * 2 + 1, 9))

# Django runs synchronous code, and every DB/Redis call is bounded by short
# timeouts (statement/lock timeouts, 250 ms Redis sockets), so a request's time
# is bounded server-side. What is not bounded is the client: with the plain
# sync worker one slow client (slow upload, slow read of the response) pins a
# whole process. gthread hands each connection to a thread and keeps idle
# keep-alive connections in the worker's poller, so a slow client costs one
# thread, not a worker.
#
# Threads: more than admission control lets hash or wait (velro/admission.py:
# HASH_CONCURRENCY + HASH_QUEUE_MAX per process, 1 + 4 on 2 cores). A request
# that finds every thread busy waits in gthread's task queue, which has no
# bound and which the app cannot see: with 2 threads a burst of logins waited
# there until HASH_MAX_REQUEST_AGE_MS (2 s) before being shed. With more, the
# overflow reaches the admission check at once and is shed in milliseconds
# (queue_full); CPU-bound hashing stays capped by the slots, not the threads.
worker_class = "gthread"
threads = _env_int("GUNICORN_THREADS", 8)

timeout = 30  # a worker silent this long is killed (request budgets are in ms)
graceful_timeout = 20  # on TERM/HUP, time for in-flight requests to finish
keepalive = 5

# Recycle workers now and then (jitter: not all at once) to bound slow leaks.
# Counted in requests, so it must be large: at 2,000 a worker busy at ~1,000
# requests/s restarted every 2 s, and each restart (a fresh Django import and
# warm-up on a core that should be serving) halved /health's throughput.
max_requests = 200_000
max_requests_jitter = 20_000

# No preload: each worker imports the app itself after fork and opens its own
# database and Redis connections. psycopg connections and redis-py sockets (and
# connection pools) must never be shared across fork; a connection opened in
# the master during import and inherited by N workers would interleave their
# protocol streams. Without preload nothing is opened before fork, and the
# per-worker warm-up (connections, caches) happens in post_worker_init below.
# The price is a little more memory and a slower start, which is fine here.
preload_app = False

# Heartbeat files on tmpfs: a disk-backed /tmp (overlayfs in containers) can
# stall the heartbeat and get healthy workers killed.
_SHM = "/dev/shm"  # noqa: S108 - tmpfs for gunicorn's heartbeat files, nothing else
if os.path.isdir(_SHM) and os.access(_SHM, os.W_OK):
    worker_tmp_dir = _SHM

# The access log is the app's (one JSON line per request, ACCESS_LOG, logger
# velro.access): gunicorn's own formats every header of every request and cost
# ~15% of a token-authenticated GET's throughput. GUNICORN_ACCESSLOG=- turns
# gunicorn's on again (for requests that never reach Django, say).
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# Behind a load balancer / reverse proxy, set FORWARDED_ALLOW_IPS to its address.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
proc_name = "velro-web"
# Gunicorn's runtime control socket (~/.gunicorn/gunicorn.ctl) is unused here;
# off, so two instances on one box do not fight over the path and a non-root
# container user with no writable home does not trip over it.
control_socket_disable = True


# Prometheus multiprocess mode: every worker writes its samples to files in
# one directory and /metrics sums them, so the numbers are right whichever
# worker answers the scrape. Must be set before the workers import the app.
_METRICS_DIR = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "var", "prometheus", bind.replace(":", "_")),
)


def _metrics_dir_usable() -> None:
    """Stop here, saying what to fix, when the metrics directory cannot be written
    (e.g. an image whose var/ belongs to root while gunicorn runs as another user):
    otherwise the first import of the app dies on a bare PermissionError."""
    try:
        os.makedirs(_METRICS_DIR, exist_ok=True)
        if not os.access(_METRICS_DIR, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable")
    except OSError as exc:
        raise SystemExit(
            f"gunicorn.conf.py: the Prometheus metrics directory {_METRICS_DIR} is not usable by uid {os.getuid()}"
            f" ({exc.strerror or exc}): make it (or its parent) writable for that user,"
            " or set PROMETHEUS_MULTIPROC_DIR to a writable directory"
        ) from None


_metrics_dir_usable()  # at config load: `gunicorn --check-config` says it too


def on_starting(server: Any) -> None:
    """Start from an empty metrics directory (files of a previous run would be summed in)."""
    _metrics_dir_usable()
    for name in os.listdir(_METRICS_DIR):
        if name.endswith(".db"):
            os.remove(os.path.join(_METRICS_DIR, name))


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's live gauges stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker: Any) -> None:
    """Warm up a freshly forked worker (its own DB/Redis connections, caches).

    The app (Django) is already loaded at this point. Warm-up is an
    optimisation: a failure is logged and the worker serves anyway.
    """
    try:
        from velro.warmup import freeze_startup_objects, warm_up
    except ImportError as exc:
        worker.log.warning("warm-up skipped: importing velro.warmup failed: %s", exc)
        return
    try:
        warm_up()
    except Exception:  # never let warm-up take a worker down
        worker.log.exception("warm-up failed; the worker serves without it")
    else:
        frozen = freeze_startup_objects()  # full GC passes no longer walk them (velro/warmup.py)
        worker.log.info("worker warmed up (%d start-up objects frozen)", frozen)
