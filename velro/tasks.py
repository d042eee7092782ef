"""Enqueueing Celery tasks from the request path: after commit, bounded, never fatal.

The durable record of the work (a referral intent, an email row) is written
in the request's transaction; the message is only a nudge. So when the broker
is down the request still succeeds: the failure is logged (once per outage),
counted, and the periodic sweeper enqueues the work again later. A short
breaker stops every request from paying the broker's connect timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

from celery import Task
from django.conf import settings
from django.db import transaction

from monitoring.metrics import ENQUEUE_FAILURES

logger = logging.getLogger("velro.tasks")

stats: Counter[str] = Counter()
_lock = threading.Lock()
_skip_until = 0.0


def enqueue(task: Task, *args: Any) -> bool:
    """Send `task(*args)` now; False (and logged) if the broker is unavailable."""
    global _skip_until
    if time.monotonic() < _skip_until:
        stats["enqueue_skipped"] += 1
        ENQUEUE_FAILURES.inc()
        return False
    try:
        task.apply_async(args=args, retry=False)
    except Exception as exc:  # the broker is down or slow: the sweeper will catch up
        stats["enqueue_failures"] += 1
        ENQUEUE_FAILURES.inc()
        with _lock:
            first = time.monotonic() >= _skip_until
            _skip_until = time.monotonic() + settings.CELERY_ENQUEUE_COOLDOWN_SECONDS
        if first:
            logger.warning(
                "enqueue of %s failed (%s); work stays recorded in the database for the sweeper",
                task.name,
                exc.__class__.__name__,
            )
        return False
    stats["enqueued"] += 1
    return True


def enqueue_on_commit(task: Task, *args: Any) -> None:
    transaction.on_commit(lambda: enqueue(task, *args))


def enqueue_reset() -> None:
    """Close the enqueue breaker (tests)."""
    global _skip_until
    _skip_until = 0.0
