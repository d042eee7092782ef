"""Thin Celery tasks: take ids, call a service.

All of them: acks_late + reject_on_worker_lost (a worker killed mid-task
gets its message redelivered), soft/hard time limits from the settings, JSON
arguments; the intent task retries with exponential backoff and jitter.
Running any of them twice changes nothing the second time (see
referrals.services). The emails are the notifications app's tasks.
"""

from __future__ import annotations

from dataclasses import asdict

from celery import shared_task
from django.db import DatabaseError

from referrals import services
from velro.tasks import RETRYING


@shared_task(name="referrals.process_intent", autoretry_for=(DatabaseError,), max_retries=8, **RETRYING)
def process_referral_intent(intent_id: int) -> str:
    return services.referral_intent_process(intent_id=intent_id)


@shared_task(name="referrals.sweep", acks_late=True, reject_on_worker_lost=True)
def sweep() -> dict[str, int]:
    return services.referrals_sweep()


@shared_task(name="referrals.nightly_sync", acks_late=True, reject_on_worker_lost=True)
def nightly_sync() -> dict[str, int]:
    return asdict(services.referrals_reconcile())
