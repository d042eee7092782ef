"""Reads for accounts (what token authentication and the API need)."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.utils import timezone

from accounts.models import Session, User


def session_user_get(*, session_id: uuid.UUID, user_id: uuid.UUID, now: datetime | None = None) -> User | None:
    """The user behind an access token, or None when its session has ended.

    Never served stale: a logged-out or revoked session fails at once.
    """
    now = now or timezone.now()
    session = (
        Session.objects.select_related("user__profile")
        .filter(pk=session_id, user_id=user_id, revoked_at__isnull=True, expires_at__gt=now, user__is_active=True)
        .first()
    )
    return session.user if session else None


def user_sessions_active(*, user_id: uuid.UUID, now: datetime | None = None) -> list[Session]:
    now = now or timezone.now()
    return list(
        Session.objects.filter(user_id=user_id, revoked_at__isnull=True, expires_at__gt=now).order_by("-created_at")
    )
