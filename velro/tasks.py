"""Enqueueing Celery tasks from the request path: after commit, bounded, never fatal.

The durable record of the work (a referral intent, an email row) is written
in the request's transaction; the message is only a nudge. So when the broker
is down the request still succeeds: the failure is logged (once per outage),
counted (`stats`, and velro.signals.enqueue_failed for the metrics), and the
periodic sweeper enqueues the work again later. A short breaker
(velro.breaker.Breaker) stops every request from paying the broker's connect
timeout.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from celery import Task
from django.conf import settings
from django.db import transaction

from velro.breaker import Breaker
from velro.signals import enqueue_failed

logger = logging.getLogger("velro.tasks")

# The retry policy of every idempotent task: acks_late + reject_on_worker_lost
# (a worker killed mid-task gets its message redelivered), exponential backoff
# with full jitter.
RETRYING = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "retry_backoff": 5,  # 5 s, 10 s, 20 s ... capped below
    "retry_backoff_max": 600,
    "retry_jitter": True,
}

stats: Counter[str] = Counter()

breaker = Breaker(
    "broker",
    cooldown=lambda: settings.CELERY_ENQUEUE_COOLDOWN_SECONDS,
    logger=logger,
    opened="enqueue of {during} failed ({error}); work stays recorded in the database for the sweeper"
    " (the broker is skipped for {cooldown:.1f}s at a time until it answers again)",
    closed="enqueue works again",
)


def enqueue(task: Task, *args: Any) -> bool:
    """Send `task(*args)` now; False (and logged) if the broker is unavailable."""
    if breaker.open:
        stats["enqueue_skipped"] += 1
        enqueue_failed.send(enqueue, task=task.name, skipped=True)
        return False
    try:
        task.apply_async(args=args, retry=False)
    except Exception as exc:  # the broker is down or slow: the sweeper will catch up
        stats["enqueue_failures"] += 1
        enqueue_failed.send(enqueue, task=task.name, skipped=False)
        breaker.trip(exc, during=task.name)
        return False
    breaker.recover()
    stats["enqueued"] += 1
    return True


def enqueue_on_commit(task: Task, *args: Any) -> None:
    transaction.on_commit(lambda: enqueue(task, *args))


def enqueue_reset() -> None:
    """Close the enqueue breaker (tests)."""
    breaker.reset()
