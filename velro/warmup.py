"""Warm a freshly started worker so its first request is not the slow one.

Called from gunicorn's post_worker_init (gunicorn.conf.py) and Celery's
worker_process_init (velro/celery.py). The platform's own steps open the
database connection (and run one query) and the Redis connection; apps add
theirs with `register` in their AppConfig.ready() (accounts: the dummy argon2id
hash the unknown-user login verifies against, which also loads the argon2
library). A failing step is logged and skipped: a dependency being down must
not stop the worker.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

from django.conf import settings
from django.db import connection

logger = logging.getLogger("velro.warmup")

_steps: dict[str, Callable[[], object]] = {}


def register(name: str, step: Callable[[], object]) -> None:
    """Run `step` at each worker's warm-up, after the platform's steps (registration order;
    registering a name again replaces its step)."""
    _steps[name] = step


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _cache() -> None:
    from velro.cache import safe_cache

    safe_cache.get("warmup")


def warm_up() -> dict[str, float]:
    """Run every step; return each one's time in milliseconds."""
    timings: dict[str, float] = {}
    for name, step in {"database": _database, "cache": _cache, **_steps}.items():
        start = time.perf_counter()
        try:
            step()
        except Exception as exc:  # a dependency being down must not stop the worker
            logger.warning("warm-up: %s failed (%s)", name, exc.__class__.__name__)
        timings[name] = round((time.perf_counter() - start) * 1000, 2)
    if not settings.RATELIMIT_ENABLE:
        logger.warning("RATELIMIT_ENABLE=false: login/signup/refresh rate limits are OFF (load tests only)")
    logger.info("warm-up done (ms): %s", timings)
    return timings


def freeze_startup_objects() -> int:
    """Move what start-up made (Django, the apps, the URL resolvers: ~150,000
    objects) out of the garbage collector's sight; returns how many are frozen.

    They live as long as the process, but every full collection walked all of
    them: 75-100 ms holding the GIL (measured in-process), during which every
    request of that worker waited. For a long-lived worker process, once it is
    warm (gunicorn.conf.py's post_worker_init), not for a test run."""
    gc.collect()  # what is garbage now is not frozen with the rest
    gc.freeze()
    return gc.get_freeze_count()
