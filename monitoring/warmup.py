"""Warm a freshly started worker so its first request is not the slow one.

Called from gunicorn's post_worker_init (gunicorn.conf.py) and Celery's
worker_process_init: opens the database connection (and runs one query),
opens the Redis connection, and computes the dummy argon2id hash the
unknown-user login path verifies against (the first hash also loads the
argon2 library).
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.db import connection

logger = logging.getLogger("velro.warmup")


def warm_up() -> dict[str, float]:
    timings: dict[str, float] = {}

    def step(name: str, fn: object) -> None:
        start = time.perf_counter()
        try:
            fn()  # type: ignore[operator]
        except Exception as exc:  # a dependency being down must not stop the worker
            logger.warning("warm-up: %s failed (%s)", name, exc.__class__.__name__)
        timings[name] = round((time.perf_counter() - start) * 1000, 2)

    def database() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    def cache() -> None:
        from velro.cache import safe_cache

        safe_cache.get("warmup")

    def argon2() -> None:
        from accounts.services import password_verify_dummy

        password_verify_dummy(password="warm-up")

    step("database", database)
    step("cache", cache)
    step("argon2", argon2)
    if not settings.RATELIMIT_ENABLE:
        logger.warning("RATELIMIT_ENABLE=false: login/signup/refresh rate limits are OFF (load tests only)")
    logger.info("warm-up done (ms): %s", timings)
    return timings
