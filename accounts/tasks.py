"""Thin Celery tasks for accounts (beat): take nothing or ids, call a service."""

from __future__ import annotations

from celery import shared_task

from accounts.identities import flow_states_prune
from accounts.onetime import ott_prune
from accounts.revocations import revocations_prune
from accounts.services import public_users_repair


@shared_task(name="accounts.prune_revocations", acks_late=True, ignore_result=True)
def prune_revocations() -> int:
    """Drop revocation-feed rows no web process needs any more (older than a day)."""
    return revocations_prune()


@shared_task(name="accounts.repair_mirror", acks_late=True, reject_on_worker_lost=True)
def repair_mirror() -> dict[str, int]:
    """The nightly users-sync repair (what `manage.py sync_users` does): backfill and fix mirror rows."""
    report = public_users_repair()
    return {"created": len(report.created), "updated": len(report.updated), "unchanged": report.unchanged}


@shared_task(name="accounts.prune_one_time_tokens", acks_late=True, ignore_result=True)
def prune_one_time_tokens() -> int:
    """Drop one-time tokens expired for more than a day, and provider sign-in round trips
    (flow states) older than a day."""
    return ott_prune() + flow_states_prune()
