"""Housekeeping of the provider sign-in round trips (accounts.identities)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import ExternalFlowState
from accounts.tasks import prune_one_time_tokens

pytestmark = pytest.mark.django_db


def _flow(name: str, *, age: timedelta) -> ExternalFlowState:
    return ExternalFlowState.objects.create(
        state_hash=name * 64,
        provider="local",
        provider_code_verifier="v" * 43,
        redirect_to="http://localhost:3000",
        created_at=timezone.now() - age,
    )


def test_the_hourly_prune_drops_round_trips_older_than_a_day_and_keeps_recent_ones():
    _flow("a", age=timedelta(days=2))
    recent = _flow("b", age=timedelta(minutes=3))
    assert prune_one_time_tokens() == 1  # the task beat runs hourly (and the one-time tokens: none)
    assert list(ExternalFlowState.objects.values_list("pk", flat=True)) == [recent.pk]
