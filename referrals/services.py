"""Referral work. Every step can run twice and change nothing.

- codes: one per user, created with the user (post_save hook), for imported
  users in bulk (accounts.events.users_imported);
- intents: written in the signup's own transaction (accounts.events.user_signed_up;
  one INSERT, no lookups);
- processing: a worker claims a pending intent (SELECT ... FOR UPDATE SKIP
  LOCKED), validates the code and records the Referral; crediting is a
  conditional UPDATE pending -> credited, so it happens exactly once however
  many workers, sweepers and nightly syncs race for it;
- emails (welcome, "you referred"): queued in the notifications outbox, in the
  same transaction as the event that causes them (notifications.services.email_queue).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import User
from accounts.selectors import user_cache_invalidate
from notifications.models import EmailKind
from notifications.services import email_queue
from referrals.codes import referral_code_new, referral_code_normalize
from referrals.models import (
    IntentStatus,
    Referral,
    ReferralCode,
    ReferralIntent,
    ReferralStatus,
    RejectReason,
)
from velro.db import db_params

logger = logging.getLogger("velro.referrals")


# --- codes ------------------------------------------------------------------------


def referral_code_create(*, user_id: uuid.UUID, now: datetime | None = None) -> str:
    """Give a user their code: one INSERT (no savepoint) in the common case."""
    now = now or timezone.now()
    table = ReferralCode._meta.db_table
    for _ in range(10):  # a collision is a 1-in-10^12 event; retrying is enough
        code = referral_code_new()
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (user_id, code, credited_count, created_at) VALUES (%s, %s, 0, %s)"
                " ON CONFLICT DO NOTHING RETURNING code",
                db_params(ReferralCode, user=user_id, code=code, created_at=now),
            )
            if cursor.fetchone() is not None:
                return code
        existing = ReferralCode.objects.filter(user_id=user_id).values_list("code", flat=True).first()
        if existing:
            return existing
    raise RuntimeError("could not allocate a unique referral code")


def referral_codes_ensure(*, user_ids: list[uuid.UUID], now: datetime | None = None) -> int:
    """One code per user that has none (users written in bulk, e.g. imported): a
    bulk insert, then the rare collision retried one by one. Returns how many were created."""
    now = now or timezone.now()
    have = set(ReferralCode.objects.filter(user_id__in=user_ids).values_list("user_id", flat=True))
    missing = [user_id for user_id in user_ids if user_id not in have]
    if not missing:
        return 0
    ReferralCode.objects.bulk_create(
        [ReferralCode(user_id=user_id, code=referral_code_new(), created_at=now) for user_id in missing],
        ignore_conflicts=True,
    )
    have = set(ReferralCode.objects.filter(user_id__in=missing).values_list("user_id", flat=True))
    for user_id in missing:
        if user_id not in have:
            referral_code_create(user_id=user_id, now=now)
    return len(missing)


# --- intents (request path) ---------------------------------------------------------


def referral_intent_record(*, user: User, code: str, now: datetime | None = None) -> ReferralIntent:
    """Signup's one cheap write: what to validate later, off the request path
    (the caller enqueues its processing on commit)."""
    return ReferralIntent.objects.create(referred=user, code=code[:64], created_at=now or timezone.now())


def welcome_email_queue(*, user: User) -> int | None:
    return email_queue(
        kind=EmailKind.WELCOME,
        recipient_id=user.pk,
        event_key=f"welcome:{user.pk}",
        context={"name": user.display_name or user.email},
    )


# --- processing (workers) --------------------------------------------------------------


# Outcomes of referral_intent_process: this call validated the intent / this call credited.
PROCESSED = {"credited", "rejected", "pending"}
CREDITED = {"credited", "resumed"}


def _validate(intent: ReferralIntent) -> tuple[uuid.UUID | None, str]:
    """(referrer id, reject reason): one indexed lookup."""
    code = referral_code_normalize(intent.code)
    if code is None:
        return None, RejectReason.MALFORMED
    owner = ReferralCode.objects.filter(code=code).values_list("user_id", flat=True).first()
    if owner is None:
        return None, RejectReason.UNKNOWN
    if owner == intent.referred_id:
        return None, RejectReason.OWN
    return owner, ""


def referral_intent_process(*, intent_id: int, now: datetime | None = None) -> str:
    """Validate one intent and record its Referral; credit it if valid.

    Returns what happened: "credited", "rejected" or "pending" when this call
    processed the intent; "resumed" when the intent had been processed by a
    run interrupted before its credit (worker killed, lock timeout) and this
    call did the credit; "skipped" when there was nothing left to do, or
    someone else holds the intent right now.
    """
    now = now or timezone.now()
    with transaction.atomic():
        intent = ReferralIntent.objects.select_for_update(skip_locked=True).filter(pk=intent_id).first()
        if intent is None:
            return "skipped"
        if intent.status == IntentStatus.PENDING:
            referrer_id, reason = _validate(intent)
            Referral.objects.get_or_create(
                referred_id=intent.referred_id,
                defaults={
                    "referrer_id": referrer_id,
                    "code": intent.code,
                    "status": ReferralStatus.REJECTED if reason else ReferralStatus.PENDING,
                    "reason": reason,
                    "created_at": now,
                    "updated_at": now,
                },
            )
            ReferralIntent.objects.filter(pk=intent.pk).update(
                status=IntentStatus.DONE, processed_at=now, attempts=F("attempts") + 1
            )
            fresh = True
        else:
            fresh = False
    referral = Referral.objects.filter(referred_id=intent.referred_id).only("id", "status").first()
    if referral is None:
        return "skipped"
    if referral.status == ReferralStatus.PENDING and referral_credit(referral_id=referral.pk, now=now):
        return "credited" if fresh else "resumed"
    return referral.status if fresh else "skipped"


def referral_credit(*, referral_id: uuid.UUID, now: datetime | None = None) -> bool:
    """Credit a pending referral exactly once; queue the referrer's email."""
    now = now or timezone.now()
    with transaction.atomic():
        claimed = Referral.objects.filter(pk=referral_id, status=ReferralStatus.PENDING, referrer__isnull=False).update(
            status=ReferralStatus.CREDITED, credited_at=now, updated_at=now
        )
        if not claimed:
            return False
        referral = Referral.objects.select_related("referred").get(pk=referral_id)
        ReferralCode.objects.filter(user_id=referral.referrer_id).update(credited_count=F("credited_count") + 1)
        referred = referral.referred
        email_queue(
            kind=EmailKind.REFERRAL_CREDITED,
            recipient_id=referral.referrer_id,
            event_key=f"referral_credited:{referral.pk}",
            context={"referred_name": referred.display_name or referred.email.split("@")[0]},
        )
    return True


def referral_reject(*, referral_id: uuid.UUID, reason: str = RejectReason.OPERATOR) -> bool:
    """Operator action: reject a referral; a credited one gives its credit back."""
    now = timezone.now()
    with transaction.atomic():
        referral = Referral.objects.select_for_update().filter(pk=referral_id).first()
        if referral is None or referral.status == ReferralStatus.REJECTED:
            return False
        if referral.status == ReferralStatus.CREDITED and referral.referrer_id:
            ReferralCode.objects.filter(user_id=referral.referrer_id, credited_count__gt=0).update(
                credited_count=F("credited_count") - 1
            )
        Referral.objects.filter(pk=referral.pk).update(status=ReferralStatus.REJECTED, reason=reason, updated_at=now)
    return True


def referral_reprocess(*, referral_id: uuid.UUID) -> str:
    """Operator action: validate the code again (e.g. after a code was fixed)."""
    with transaction.atomic():
        referral = Referral.objects.select_for_update().filter(pk=referral_id).first()
        if referral is None or referral.status == ReferralStatus.CREDITED:
            return "skipped"
        intent = ReferralIntent(referred_id=referral.referred_id, code=referral.code)
        referrer_id, reason = _validate(intent)
        Referral.objects.filter(pk=referral.pk).update(
            referrer_id=referrer_id,
            status=ReferralStatus.REJECTED if reason else ReferralStatus.PENDING,
            reason=reason,
            updated_at=timezone.now(),
        )
    if not reason and referral_credit(referral_id=referral.pk):
        return "credited"
    return ReferralStatus.REJECTED if reason else ReferralStatus.PENDING


# --- the sweeper and the nightly sync -----------------------------------------------------


def _pending_intent_ids(*, older_than: datetime, limit: int) -> list[int]:
    return list(
        ReferralIntent.objects.filter(status=IntentStatus.PENDING, created_at__lte=older_than)
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )


def referrals_sweep(*, min_age_seconds: int | None = None, limit: int = 500) -> dict[str, int]:
    """Process work whose message was lost (broker down at signup). Runs every minute.

    (The emails that work queued are the outbox's: notifications.services.emails_sweep.)
    """
    now = timezone.now()
    age = settings.REFERRAL_SWEEP_MIN_AGE_SECONDS if min_age_seconds is None else min_age_seconds
    cutoff = now - timedelta(seconds=age)
    summary = {"intents": 0, "credited": 0}
    for intent_id in _pending_intent_ids(older_than=cutoff, limit=limit):
        outcome = referral_intent_process(intent_id=intent_id)
        summary["intents"] += outcome in PROCESSED
        summary["credited"] += outcome in CREDITED
    for referral_id in Referral.objects.filter(
        status=ReferralStatus.PENDING, referrer__isnull=False, created_at__lte=cutoff
    ).values_list("pk", flat=True)[:limit]:
        summary["credited"] += referral_credit(referral_id=referral_id)
    return summary


@dataclass
class ReconcileReport:
    intents_examined: int = 0
    intents_processed: int = 0
    referrals_credited: int = 0
    counters_examined: int = 0
    counters_fixed: int = 0
    codes_created: int = 0


def _counters_fix() -> tuple[int, int]:
    """Recompute credited_count from the Referral table; fix the rows that drifted."""
    credited = (
        Referral.objects.filter(referrer_id=OuterRef("user_id"), status=ReferralStatus.CREDITED)
        .values("referrer_id")
        .annotate(n=Count("pk"))
        .values("n")
    )
    drifted = ReferralCode.objects.annotate(actual=Coalesce(Subquery(credited), 0)).filter(
        ~Q(credited_count=F("actual"))
    )
    examined = ReferralCode.objects.count()
    fixed = 0
    for user_id in drifted.values_list("user_id", flat=True):
        with transaction.atomic():
            # Lock, then count: a concurrent credit either committed before the
            # count (and is counted) or waits for this lock and adds its +1 after.
            ReferralCode.objects.select_for_update().filter(user_id=user_id).first()
            actual = Referral.objects.filter(referrer_id=user_id, status=ReferralStatus.CREDITED).count()
            fixed += (
                ReferralCode.objects.filter(user_id=user_id)
                .exclude(credited_count=actual)
                .update(credited_count=actual)
            )
    return examined, fixed


def referrals_reconcile() -> ReconcileReport:
    """The nightly sync: finish pending referral work, give every user a code, repair
    the counters, log a summary. (The users mirror is accounts' nightly job,
    accounts.repair_mirror; the outbox is swept by notifications.sweep.)"""
    report = ReconcileReport()
    now = timezone.now()
    while True:
        batch = _pending_intent_ids(older_than=now, limit=500)
        if not batch:
            break
        report.intents_examined += len(batch)
        outcomes = [referral_intent_process(intent_id=intent_id) for intent_id in batch]
        report.intents_processed += sum(outcome in PROCESSED for outcome in outcomes)
        report.referrals_credited += sum(outcome in CREDITED for outcome in outcomes)
        if not any(outcome != "skipped" for outcome in outcomes):
            break  # everything left is locked by busy workers: they will finish it
    for referral_id in Referral.objects.filter(status=ReferralStatus.PENDING, referrer__isnull=False).values_list(
        "pk", flat=True
    ):
        report.referrals_credited += referral_credit(referral_id=referral_id)

    for user_id in User.objects.filter(referral_code__isnull=True).values_list("pk", flat=True):
        referral_code_create(user_id=user_id)
        user_cache_invalidate(user_id=user_id)  # the cached snapshot said "no code"
        report.codes_created += 1
    report.counters_examined, report.counters_fixed = _counters_fix()

    logger.info("referral nightly sync: %s", asdict(report))
    return report
