"""Referral and notification-email work. Every step can run twice and change nothing.

- codes: one per user, created with the user (post_save hook);
- intents: written by signup in its own transaction (one INSERT, no lookups);
- processing: a worker claims a pending intent (SELECT ... FOR UPDATE SKIP
  LOCKED), validates the code and records the Referral; crediting is a
  conditional UPDATE pending -> credited, so it happens exactly once however
  many workers, sweepers and nightly syncs race for it;
- emails: one row per event (unique event_key); sending claims the row with a
  conditional UPDATE pending -> sending first, so an email is sent at most once.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import connection, transaction
from django.db.models import Count, F, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.template.loader import render_to_string
from django.utils import timezone

from accounts.models import User
from accounts.selectors import user_cache_invalidate
from referrals.codes import referral_code_new, referral_code_normalize
from referrals.models import (
    EmailKind,
    EmailNotification,
    EmailStatus,
    IntentStatus,
    Referral,
    ReferralCode,
    ReferralIntent,
    ReferralStatus,
    RejectReason,
)
from velro.db import db_params
from velro.tasks import enqueue_on_commit

logger = logging.getLogger("velro.referrals")

SUBJECTS = {
    EmailKind.WELCOME: "Welcome to Velro",
    EmailKind.REFERRAL_CREDITED: "You referred {referred_name} to Velro",
}


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


# --- intents (request path) ---------------------------------------------------------


def referral_intent_record(*, user: User, code: str, now: datetime | None = None) -> ReferralIntent:
    """Signup's one cheap write: what to validate later, off the request path."""
    from referrals.tasks import process_referral_intent

    intent = ReferralIntent.objects.create(referred=user, code=code[:64], created_at=now or timezone.now())
    enqueue_on_commit(process_referral_intent, intent.pk)
    return intent


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


# --- emails ----------------------------------------------------------------------------


def email_queue(*, kind: str, recipient_id: uuid.UUID, event_key: str, context: dict[str, Any]) -> int | None:
    """Record the email for an event, once, and send it after commit.

    One INSERT ... ON CONFLICT DO NOTHING: returns the new row's id, or None
    when this event's email was already recorded (and is sent by whoever
    recorded it).
    """
    from referrals.tasks import send_email

    table = EmailNotification._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (event_key, kind, recipient_id, context, status, attempts, last_error, created_at)"
            " VALUES (%s, %s, %s, %s, %s, 0, '', %s) ON CONFLICT (event_key) DO NOTHING RETURNING id",
            db_params(
                EmailNotification,
                event_key=event_key,
                kind=kind,
                recipient=recipient_id,
                context=context,
                status=EmailStatus.PENDING,
                created_at=timezone.now(),
            ),
        )
        row = cursor.fetchone()
    if row is None:
        return None
    enqueue_on_commit(send_email, row[0])
    return row[0]


class EmailSendError(Exception):
    """The SMTP server refused or could not be reached: safe to retry (nothing was sent)."""


def _message(notification: EmailNotification) -> EmailMultiAlternatives:
    recipient = notification.recipient
    context = {**notification.context, "email": recipient.email}
    # One line whatever a display name contains: a header cannot be split.
    subject = " ".join(SUBJECTS[notification.kind].format(**context).split())
    text = render_to_string(f"referrals/email/{notification.kind}.txt", context)
    html = render_to_string(f"referrals/email/{notification.kind}.html", context)
    message = EmailMultiAlternatives(subject, text, settings.DEFAULT_FROM_EMAIL, [recipient.email])
    message.attach_alternative(html, "text/html")
    message.extra_headers["X-Velro-Event"] = notification.event_key
    return message


def email_send(*, notification_id: int, now: datetime | None = None) -> str:
    """Send one recorded email at most once: "sent", "skipped" or raises EmailSendError.

    Everything that can fail without sending (reading the row and its
    recipient, rendering) happens before the claim; between the claim and
    the end of the SMTP conversation any failure hands the row back. So a
    stalled database or a time limit can delay an email, never lose it.
    """
    now = now or timezone.now()
    notification = (
        EmailNotification.objects.select_related("recipient")
        .filter(pk=notification_id, status=EmailStatus.PENDING)
        .first()
    )
    if notification is None:
        return "skipped"
    message = _message(notification)
    claimed = EmailNotification.objects.filter(pk=notification_id, status=EmailStatus.PENDING).update(
        status=EmailStatus.SENDING, claimed_at=now, attempts=F("attempts") + 1
    )
    if not claimed:
        return "skipped"  # another worker claimed it first
    EmailNotification.objects.filter(pk=notification_id).update(smtp_started_at=timezone.now())
    try:
        message.send()
    except Exception as exc:
        # Nothing was delivered (the server refused, never answered, or the
        # task ran out of time first): hand the row back for a retry.
        EmailNotification.objects.filter(pk=notification_id, status=EmailStatus.SENDING).update(
            status=EmailStatus.PENDING, smtp_started_at=None, last_error=f"{exc.__class__.__name__}: {exc}"[:300]
        )
        raise EmailSendError(str(exc)) from exc
    EmailNotification.objects.filter(pk=notification_id).update(status=EmailStatus.SENT, sent_at=timezone.now())
    return "sent"


def email_give_up(*, notification_id: int, error: str) -> None:
    EmailNotification.objects.filter(pk=notification_id, status=EmailStatus.PENDING).update(
        status=EmailStatus.FAILED, last_error=error[:300]
    )


# --- the sweeper and the nightly sync -----------------------------------------------------


def _pending_intent_ids(*, older_than: datetime, limit: int) -> list[int]:
    return list(
        ReferralIntent.objects.filter(status=IntentStatus.PENDING, created_at__lte=older_than)
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )


def referrals_sweep(*, min_age_seconds: int | None = None, limit: int = 500) -> dict[str, int]:
    """Process work whose message was lost (broker down at signup). Runs every minute."""
    now = timezone.now()
    age = settings.REFERRAL_SWEEP_MIN_AGE_SECONDS if min_age_seconds is None else min_age_seconds
    cutoff = now - timedelta(seconds=age)
    summary = {"intents": 0, "credited": 0, "emails": 0}
    for intent_id in _pending_intent_ids(older_than=cutoff, limit=limit):
        outcome = referral_intent_process(intent_id=intent_id)
        summary["intents"] += outcome in PROCESSED
        summary["credited"] += outcome in CREDITED
    for referral_id in Referral.objects.filter(
        status=ReferralStatus.PENDING, referrer__isnull=False, created_at__lte=cutoff
    ).values_list("pk", flat=True)[:limit]:
        summary["credited"] += referral_credit(referral_id=referral_id)
    EmailNotification.objects.filter(status=EmailStatus.PENDING, attempts__gte=settings.EMAIL_MAX_ATTEMPTS).update(
        status=EmailStatus.FAILED
    )  # out of attempts: visible to operators as failed (last_error kept)
    # Claimed by a task that died before its SMTP conversation began (worker
    # killed, time limit): nothing was delivered, so it goes back in line.
    EmailNotification.objects.filter(
        status=EmailStatus.SENDING,
        smtp_started_at__isnull=True,
        claimed_at__lt=now - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT),
    ).update(status=EmailStatus.PENDING)
    emails = EmailNotification.objects.filter(
        status=EmailStatus.PENDING, created_at__lte=cutoff, attempts__lt=settings.EMAIL_MAX_ATTEMPTS
    ).values_list("pk", flat=True)[:limit]
    deadline = time.monotonic() + settings.CELERY_TASK_SOFT_TIME_LIMIT / 2
    for notification_id in emails:
        if time.monotonic() > deadline:
            break  # stay well inside the task's time limit: the next sweep goes on
        try:
            summary["emails"] += email_send(notification_id=notification_id) == "sent"
        except EmailSendError:
            break  # the SMTP server is down: the next sweep tries again
    return summary


@dataclass
class ReconcileReport:
    intents_examined: int = 0
    intents_processed: int = 0
    referrals_credited: int = 0
    counters_examined: int = 0
    counters_fixed: int = 0
    codes_created: int = 0
    mirrors_created: int = 0
    mirrors_updated: int = 0
    emails_sent: int = 0
    emails_interrupted: int = 0


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
    """The nightly sync: finish pending work, repair counters and mirrors, log a summary."""
    from accounts.services import public_users_repair

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

    mirrors = public_users_repair()
    report.mirrors_created, report.mirrors_updated = len(mirrors.created), len(mirrors.updated)

    # An email claimed but never marked sent was interrupted mid-send: it may
    # have been delivered, so it is not sent again (at most once); operators
    # see it as failed.
    lease = now - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT * 2)
    report.emails_interrupted = EmailNotification.objects.filter(
        status=EmailStatus.SENDING, smtp_started_at__isnull=False, claimed_at__lt=lease
    ).update(status=EmailStatus.FAILED, last_error="interrupted while sending; not resent (at most once)")
    report.emails_sent = referrals_sweep(min_age_seconds=0)["emails"]
    logger.info("referral nightly sync: %s", asdict(report))
    return report
