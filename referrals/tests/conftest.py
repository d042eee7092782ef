"""Fixtures for the referral tests: the real SMTP listener and Celery workers
(notifications/tests/support.py), re-exported here for the tests that import
them from this module (velro/tests/test_runtime_install.py, test_image.py).
"""

from notifications.tests.support import (  # noqa: F401  (fixtures and helpers, registered by import)
    WORKER_READY_TIMEOUT,
    WORKER_TASK_SOFT_TIME_LIMIT,
    WORKER_TASK_TIME_LIMIT,
    WORKER_VISIBILITY_TIMEOUT,
    SmtpServer,
    Worker,
    _enqueue_breaker_closed,
    broker_purge,
    broker_unacked_delivered_at,
    celery_worker,
    smtp_server,
    wait_until,
    worker_database_url,
)
