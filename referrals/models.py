"""Referral codes, the durable referral intents, referral records.

(The emails they cause are the notifications app's outbox.)
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class ReferralCode(models.Model):
    """A user's own code, and the credit earned through it.

    `credited_count` is the reward counter: one per credited referral. It is
    a cache of `Referral.objects.filter(referrer=..., status=credited).count()`
    that the nightly sync recomputes and repairs.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, primary_key=True, on_delete=models.CASCADE, related_name="referral_code"
    )
    code = models.CharField(max_length=16, unique=True)
    credited_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "referral_codes"

    def __str__(self) -> str:
        return self.code


class IntentStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DONE = "done", "Done"


class ReferralIntent(models.Model):
    """What signup wrote: "this user signed up with this code". Work to do.

    Written in the signup's own transaction, so a broker outage delays the
    processing but never loses it: the sweeper and the nightly sync pick up
    every intent still pending.
    """

    id = models.BigAutoField(primary_key=True)
    referred = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="referral_intent")
    code = models.CharField(max_length=64)
    status = models.CharField(max_length=10, choices=IntentStatus.choices, default=IntentStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "referral_intents"
        indexes = [
            models.Index(fields=["created_at"], name="referral_intent_pending", condition=models.Q(status="pending"))
        ]

    def __str__(self) -> str:
        return f"intent {self.pk} ({self.status})"


class ReferralStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    CREDITED = "credited", "Credited"
    REJECTED = "rejected", "Rejected"


class RejectReason(models.TextChoices):
    MALFORMED = "malformed_code", "Malformed code"
    UNKNOWN = "unknown_code", "Unknown code"
    OWN = "own_code", "Own code"
    OPERATOR = "operator", "Rejected by an operator"


class Referral(models.Model):
    """The outcome of one referral intent: who referred whom, and whether it counted."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    referrer = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="referrals_made",
    )
    referred = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="referral_received"
    )
    code = models.CharField(max_length=64)
    status = models.CharField(max_length=10, choices=ReferralStatus.choices, default=ReferralStatus.PENDING)
    reason = models.CharField(max_length=20, choices=RejectReason.choices, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    credited_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "referrals"
        indexes = [models.Index(fields=["referrer", "status"], name="referral_referrer_status")]

    def __str__(self) -> str:
        return f"referral of {self.referred_id} ({self.status})"
