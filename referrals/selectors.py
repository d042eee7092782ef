"""Reads for referrals."""

from __future__ import annotations

import uuid

from django.db.models import Count, QuerySet

from accounts.models import User
from referrals.models import Referral, ReferralCode, ReferralStatus


def user_referral_code(user: User) -> str | None:
    """The user's code for the user body (accounts.selectors.user_field "referral_code"):
    the one just created (signup, set by the post_save hook in signals.py) or the row joined
    with select_related("referral_code"); no query of its own."""
    if getattr(user, "new_referral_code", None):
        return user.new_referral_code
    code = getattr(user, "referral_code", None)  # a missing reverse one-to-one reads as None
    return code.code if code is not None else None


def referral_code_get(*, user_id: uuid.UUID) -> str | None:
    return ReferralCode.objects.filter(user_id=user_id).values_list("code", flat=True).first()


def referral_counts(*, referrer_id: uuid.UUID) -> dict[str, int]:
    counts = {status: 0 for status in ReferralStatus.values}
    rows = Referral.objects.filter(referrer_id=referrer_id).values("status").annotate(n=Count("pk"))
    counts.update({row["status"]: row["n"] for row in rows})
    return counts


def referrals_made(*, referrer_id: uuid.UUID) -> QuerySet[Referral]:
    return (
        Referral.objects.filter(referrer_id=referrer_id)
        .select_related("referred")
        .only("id", "status", "created_at", "referred__id", "referred__display_name", "referred__date_joined")
        .order_by("-created_at", "id")
    )
