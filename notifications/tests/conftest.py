"""Fixtures for the outbox tests: the real SMTP listener and Celery workers (support.py)."""

from notifications.tests.support import (  # noqa: F401  (fixtures, registered by import)
    _enqueue_breaker_closed,
    celery_worker,
    smtp_server,
)
