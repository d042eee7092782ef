"""Hooks only: each receiver calls a service."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from accounts import services
from accounts.models import User


@receiver(post_save, sender=User, dispatch_uid="accounts.users_sync.save")
def user_saved(sender: type[User], instance: User, created: bool, update_fields: Any = None, **kwargs: Any) -> None:
    if kwargs.get("raw"):
        return  # loaddata: fixtures carry their own mirror rows
    if update_fields is not None and not set(update_fields) & set(services.MIRRORED_FIELDS):
        return  # e.g. a password or last_login write: nothing mirrored changed
    services.public_user_sync(user=instance, created=created)


@receiver(post_delete, sender=User, dispatch_uid="accounts.users_sync.delete")
def user_deleted(sender: type[User], instance: User, **kwargs: Any) -> None:
    services.public_user_remove(user_id=instance.pk)
