"""Thin Celery tasks: take ids, call a service.

All of them: acks_late + reject_on_worker_lost (a worker killed mid-task
gets its message redelivered), retries with exponential backoff and jitter,
soft/hard time limits from the settings, JSON arguments. Running any of them
twice changes nothing the second time (see referrals.services).
"""

from __future__ import annotations

from celery import Task, shared_task
from celery.utils.time import get_exponential_backoff_interval
from django.db import DatabaseError

from referrals import services

RETRYING = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "retry_backoff": 5,  # 5 s, 10 s, 20 s ... capped below
    "retry_backoff_max": 600,
    "retry_jitter": True,
}


@shared_task(name="referrals.process_intent", autoretry_for=(DatabaseError,), max_retries=8, **RETRYING)
def process_referral_intent(intent_id: int) -> str:
    return services.referral_intent_process(intent_id=intent_id)


@shared_task(name="referrals.credit", autoretry_for=(DatabaseError,), max_retries=8, **RETRYING)
def credit_referral(referral_id: str) -> bool:
    return services.referral_credit(referral_id=referral_id)


@shared_task(name="referrals.send_email", bind=True, autoretry_for=(DatabaseError,), max_retries=6, **RETRYING)
def send_email(self: Task, notification_id: int) -> str:
    try:
        return services.email_send(notification_id=notification_id)
    except services.EmailSendError as exc:
        if self.request.retries >= self.max_retries:
            services.email_give_up(notification_id=notification_id, error=str(exc))
            return "failed"
        delay = get_exponential_backoff_interval(
            factor=RETRYING["retry_backoff"],
            retries=self.request.retries,
            maximum=RETRYING["retry_backoff_max"],
            full_jitter=True,
        )
        raise self.retry(exc=exc, countdown=delay) from exc


@shared_task(name="referrals.sweep", acks_late=True, reject_on_worker_lost=True)
def sweep() -> dict[str, int]:
    return services.referrals_sweep()


@shared_task(name="referrals.nightly_sync", acks_late=True, reject_on_worker_lost=True)
def nightly_sync() -> dict[str, int]:
    from dataclasses import asdict

    return asdict(services.referrals_reconcile())
