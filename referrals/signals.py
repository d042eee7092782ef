"""Hooks only: every new user gets a referral code, by any creation path."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models.signals import post_save
from django.dispatch import receiver

from referrals import services


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="referrals.code_on_user_create")
def user_created(sender: type, instance: Any, created: bool, **kwargs: Any) -> None:
    if created and not kwargs.get("raw"):
        # Kept on the instance so the signup response needs no extra read.
        instance.new_referral_code = services.referral_code_create(user_id=instance.pk, now=instance.date_joined)
