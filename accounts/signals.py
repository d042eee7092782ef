"""Hooks only: each receiver calls a service or an invalidation."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from accounts import services
from accounts.events import password_replaced
from accounts.models import PublicUser, User
from accounts.selectors import user_cache_invalidate


@receiver(post_save, sender=User, dispatch_uid="accounts.users_sync.save")
def user_saved(sender: type[User], instance: User, created: bool, update_fields: Any = None, **kwargs: Any) -> None:
    if kwargs.get("raw"):
        return  # loaddata: fixtures carry their own mirror rows
    if not created:
        # Any change (is_active, password, email...) ends the cached snapshot.
        user_cache_invalidate(user_id=instance.pk)
    if update_fields is not None and not set(update_fields) & set(services.MIRRORED_FIELDS):
        return  # e.g. a password write: nothing mirrored changed
    services.public_user_sync(user=instance, created=created)


@receiver(post_save, sender=User, dispatch_uid="accounts.revocation.deactivated")
def user_deactivated(sender: type[User], instance: User, created: bool, **kwargs: Any) -> None:
    # Deactivated (admin, ban, importer row by row): no cached state of the
    # account is trusted from now on, on any node. Idempotent, so a save of an
    # already inactive user costs one more feed row, nothing else.
    if not created and not instance.is_active and not kwargs.get("raw"):
        services.user_revoke(user_id=instance.pk)


@receiver(post_save, sender=User, dispatch_uid="accounts.revocation.banned")
def user_banned(sender: type[User], instance: User, created: bool, **kwargs: Any) -> None:
    # Banned (the admin API's ban_duration, the Django admin, the shell): the
    # sessions end and no cached state of the account is trusted, on every
    # node, like a logout. Idempotent, as above: a later save of a banned user
    # costs one UPDATE that matches nothing and one more feed row.
    if not created and instance.is_banned() and not kwargs.get("raw"):
        services.user_ban_enforce(user_id=instance.pk)


@receiver(password_replaced, sender=User, dispatch_uid="accounts.revocation.password")
def user_password_replaced(sender: type[User], user: User, keep_session_id: Any = None, **kwargs: Any) -> None:
    # Whoever replaced it (API, admin form, changepassword, shell): the other
    # sessions and their refresh tokens end with the old password.
    services.user_sessions_end(user_id=user.pk, reason="password_change", keep_session_id=keep_session_id)


@receiver(post_delete, sender=User, dispatch_uid="accounts.users_sync.delete")
def user_deleted(sender: type[User], instance: User, **kwargs: Any) -> None:
    services.public_user_remove(user_id=instance.pk)
    services.user_revoke(user_id=instance.pk)


@receiver(post_save, sender=PublicUser, dispatch_uid="accounts.mirror.save")
def mirror_saved(sender: type[PublicUser], instance: PublicUser, created: bool, **kwargs: Any) -> None:
    # The role lives on the mirror and is part of the cached user snapshot.
    if not created:
        user_cache_invalidate(user_id=instance.pk)
