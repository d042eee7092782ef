"""Referral test data.

Two kinds of helpers:
- factories for raw rows (ReferralIntentFactory, ReferralFactory), to set up
  a state directly, e.g. a drifted or half-done one for the sweeper and the
  nightly sync (the outbox's rows: notifications/tests/factories.py);
- `refer()`, which builds a referral the way production does: a referred
  user, their intent, then the worker's service (validate, record, credit).
"""

from __future__ import annotations

from typing import Any

import factory
from django.utils import timezone

from accounts.models import User
from accounts.tests.factories import UserFactory
from referrals import services
from referrals.models import (
    Referral,
    ReferralCode,
    ReferralIntent,
    ReferralStatus,
)


def code_of(user: User) -> str:
    return ReferralCode.objects.get(user=user).code


def credited_count(user: User) -> int:
    return ReferralCode.objects.get(user=user).credited_count


class ReferralIntentFactory(factory.django.DjangoModelFactory):
    """A pending intent as signup writes it (without enqueueing anything)."""

    class Meta:
        model = ReferralIntent

    referred = factory.SubFactory(UserFactory)
    code = "ZZZZZZZZ"


class ReferralFactory(factory.django.DjangoModelFactory):
    """A raw Referral row: no counter update, no email (use `refer()` for those)."""

    class Meta:
        model = Referral

    referrer = factory.SubFactory(UserFactory)
    referred = factory.SubFactory(UserFactory)
    code = factory.LazyAttribute(lambda o: code_of(o.referrer) if o.referrer else "ZZZZZZZZ")
    status = ReferralStatus.PENDING


def refer(referrer: User | None, *, code: str | None = None, **referred_fields: Any) -> Referral:
    """A new user who signed up with `referrer`'s code (or `code`), processed by
    the worker's service: credited when valid, rejected otherwise."""
    referred = UserFactory(**referred_fields)
    typed = code if code is not None else code_of(referrer)
    intent = ReferralIntent.objects.create(referred=referred, code=typed, created_at=timezone.now())
    services.referral_intent_process(intent_id=intent.pk)
    return Referral.objects.get(referred=referred)


def refer_rejected(referrer: User, **referred_fields: Any) -> Referral:
    """A referral that was credited, then rejected by an operator."""
    referral = refer(referrer, **referred_fields)
    services.referral_reject(referral_id=referral.pk)
    referral.refresh_from_db()
    return referral
