"""Thin Celery tasks: take ids, call a service.

acks_late + reject_on_worker_lost (a worker killed mid-task gets its message
redelivered), retries with exponential backoff and full jitter, the soft/hard
time limits from the settings, JSON arguments. Sending twice sends once
(notifications.services.email_send claims the row first).
"""

from __future__ import annotations

from celery import Task, shared_task
from celery.utils.time import get_exponential_backoff_interval
from django.db import DatabaseError

from notifications import services
from velro.tasks import RETRYING

SEND_EMAIL_OPTIONS = {"bind": True, "autoretry_for": (DatabaseError,), "max_retries": 6, **RETRYING}


def _send(task: Task, notification_id: int) -> str:
    try:
        return services.email_send(notification_id=notification_id)
    except services.EmailSendError as exc:
        if task.request.retries >= task.max_retries:
            services.email_give_up(notification_id=notification_id, error=str(exc))
            return "failed"
        delay = get_exponential_backoff_interval(
            factor=RETRYING["retry_backoff"],
            retries=task.request.retries,
            maximum=RETRYING["retry_backoff_max"],
            full_jitter=True,
        )
        raise task.retry(exc=exc, countdown=delay) from exc


@shared_task(name=services.SEND_EMAIL_TASK, **SEND_EMAIL_OPTIONS)
def send_email(self: Task, notification_id: int) -> str:
    return _send(self, notification_id)


# The task's name before the outbox became its own app: messages already in
# the broker under it (and their retries) still run, the same way.
@shared_task(name="referrals.send_email", **SEND_EMAIL_OPTIONS)
def send_email_legacy(self: Task, notification_id: int) -> str:
    return _send(self, notification_id)


@shared_task(name="notifications.sweep", acks_late=True, reject_on_worker_lost=True)
def sweep() -> dict[str, int]:
    return services.emails_sweep()
