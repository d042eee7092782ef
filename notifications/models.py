"""The email outbox: one row per event, recorded in the caller's transaction, sent at most once.

This app knows no other app: callers (referrals' receivers) queue an email by
kind, recipient id, event key and template context. The recipient is the user
model (settings.AUTH_USER_MODEL).

The table is `email_notifications`, created by referrals' migrations before the
model moved here (notifications/migrations/0001_initial.py takes it over in
the migration state only; no data moved).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class EmailKind(models.TextChoices):
    WELCOME = "welcome", "Welcome"
    REFERRAL_CREDITED = "referral_credited", "You referred someone"
    # A code and a link (accounts.onetime): the secrets are not in the row's
    # context, a context hook derives them at render time (services.context_hook_register).
    RECOVERY = "recovery", "Password recovery"
    MAGICLINK = "magiclink", "Sign-in code and link"
    CONFIRMATION = "confirmation", "Confirm your address"
    INVITE = "invite", "Invitation"
    EMAIL_CHANGE = "email_change", "Confirm an email change"
    REAUTHENTICATION = "reauthentication", "Reauthentication code"
    # A notice, no secret (accounts.recovery_flows): a recovery code was spent.
    RECOVERY_CODE_USED = "recovery_code_used", "A recovery code was used"


class EmailStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"


class EmailNotification(models.Model):
    """One email per event, recorded so it is sent at most once.

    `event_key` is unique ("welcome:<user id>", "referral_credited:<referral id>"):
    a second attempt to create the same email finds the first.
    """

    id = models.BigAutoField(primary_key=True)
    event_key = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=EmailKind.choices)
    recipient = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="emails")
    context = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=EmailStatus.choices, default=EmailStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=300, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    # Set just before the SMTP conversation starts: a "sending" row without it
    # was interrupted before anything could be delivered, so it is safe to
    # send again; one with it may have been delivered, so it is not.
    smtp_started_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "email_notifications"
        indexes = [models.Index(fields=["created_at"], name="email_pending", condition=models.Q(status="pending"))]

    def __str__(self) -> str:
        return self.event_key
