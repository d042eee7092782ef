"""Hooks only: referrals hang their work off what accounts announces (accounts.events)
and off the user model's post_save. Each receiver calls a service."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models.signals import post_save
from django.dispatch import receiver

from accounts.events import user_signed_up, users_imported
from referrals import services, tasks
from velro.tasks import enqueue_on_commit


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="referrals.code_on_user_create")
def user_created(sender: type, instance: Any, created: bool, **kwargs: Any) -> None:
    if created and not kwargs.get("raw"):
        # Kept on the instance so the signup response needs no extra read
        # (services.user_referral_code reads it).
        instance.new_referral_code = services.referral_code_create(user_id=instance.pk, now=instance.date_joined)


@receiver(user_signed_up, dispatch_uid="referrals.signup")
def signed_up(
    sender: type, user: Any, referral_code: str | None = None, now: datetime | None = None, **kwargs: Any
) -> None:
    # In the signup's transaction: the intent and the welcome email are
    # durable with the user; the processing is enqueued only on commit.
    if referral_code:
        intent = services.referral_intent_record(user=user, code=referral_code, now=now)
        enqueue_on_commit(tasks.process_referral_intent, intent.pk)
    services.welcome_email_queue(user=user)


@receiver(users_imported, dispatch_uid="referrals.codes_on_import")
def users_imported_codes(sender: type, user_ids: list, now: datetime | None = None, **kwargs: Any) -> None:
    services.referral_codes_ensure(user_ids=user_ids, now=now)
