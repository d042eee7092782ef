"""Thin Celery tasks for accounts (beat): take nothing or ids, call a service."""

from __future__ import annotations

from celery import shared_task

from accounts.revocations import revocations_prune


@shared_task(name="accounts.prune_revocations", acks_late=True, ignore_result=True)
def prune_revocations() -> int:
    """Drop revocation-feed rows no web process needs any more (older than a day)."""
    return revocations_prune()
