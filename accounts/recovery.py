"""Recovery codes (beyond GoTrue): 10 single-use codes that reach aal2 when the
second factor is lost.

Made when the user's first second factor is added (a verified TOTP factor or a
first passkey) and shown once; stored only as an HMAC under a key derived from
SECRET_KEY (a dump alone cannot test guesses); each spent by a conditional
UPDATE, so of two concurrent uses of one code exactly one wins. Regenerating
replaces the whole set.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import Count, Max, Q
from django.utils import timezone

from accounts.models import RecoveryCode
from accounts.tokens import derived_key

CODE_COUNT = 10
# Two groups of five characters without look-alikes (0/O, 1/I/L): 31^10, about 2^49.5, per code.
ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
GROUP, GROUPS = 5, 2


def _normalize(code: str) -> str:
    return "".join(ch for ch in code.strip().lower() if ch.isalnum())


def recovery_code_hash(code: str) -> str:
    return hmac.new(derived_key("recovery-code"), _normalize(code).encode(), hashlib.sha256).hexdigest()


def _new_code() -> str:
    groups = ("".join(secrets.choice(ALPHABET) for _ in range(GROUP)) for _ in range(GROUPS))
    return "-".join(groups)


def recovery_codes_generate(*, user_id: uuid.UUID, now: datetime | None = None) -> list[str]:
    """A new set of codes for the user (the old set, used or not, is gone): returned once."""
    now = now or timezone.now()
    codes = [_new_code() for _ in range(CODE_COUNT)]
    with transaction.atomic():
        RecoveryCode.objects.filter(user_id=user_id).delete()
        RecoveryCode.objects.bulk_create(
            RecoveryCode(user_id=user_id, code_hash=recovery_code_hash(code), created_at=now) for code in codes
        )
    return codes


def recovery_codes_ensure(*, user_id: uuid.UUID) -> list[str]:
    """The first set, when the user has none yet (their first second factor): the codes,
    to show once; [] when a set exists already."""
    if RecoveryCode.objects.filter(user_id=user_id).exists():
        return []
    return recovery_codes_generate(user_id=user_id)


def recovery_codes_remaining(*, user_id: uuid.UUID) -> int:
    return RecoveryCode.objects.filter(user_id=user_id, used_at__isnull=True).count()


@dataclass(frozen=True)
class RecoveryCodesSummary:
    remaining: int
    created_at: datetime | None  # when the set was made (None: the user has none)


def recovery_codes_summary(*, user_id: uuid.UUID) -> RecoveryCodesSummary:
    """What the user may see of their set: how many codes are left and when it was made (one query)."""
    row = RecoveryCode.objects.filter(user_id=user_id).aggregate(
        remaining=Count("pk", filter=Q(used_at__isnull=True)), created_at=Max("created_at")
    )
    return RecoveryCodesSummary(remaining=row["remaining"], created_at=row["created_at"])


def recovery_code_use(*, user_id: uuid.UUID, code: str, now: datetime | None = None) -> bool:
    """Spend one unused code of the user: True if this call spent it."""
    if not _normalize(code):
        return False
    spent = RecoveryCode.objects.filter(
        user_id=user_id, code_hash=recovery_code_hash(code), used_at__isnull=True
    ).update(used_at=now or timezone.now())
    return spent == 1


def recovery_codes_delete(*, user_id: uuid.UUID) -> None:
    """The user has no second factor any more (MFA reset, last factor removed)."""
    RecoveryCode.objects.filter(user_id=user_id).delete()
