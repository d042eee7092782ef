"""Thin periodic tasks (Celery beat, every minute)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from monitoring import slo


@shared_task(name="monitoring.evaluate_slos", ignore_result=True)
def evaluate_slos() -> dict[str, Any]:
    return slo.evaluate(log=True)
