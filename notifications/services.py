"""The email outbox: record an email for an event once, send it at most once.

- queueing: one INSERT ... ON CONFLICT (event_key) DO NOTHING in the caller's
  transaction (the durable record), the send enqueued after commit;
- sending: claim the row with a conditional UPDATE pending -> sending first,
  so an email is sent at most once however many workers and sweeps race;
- the sweep (beat, every minute): sends what a lost message left pending,
  gives back what a dead task claimed before its SMTP conversation began,
  marks failed what ran out of attempts or was cut mid-send.

Callers name the email by kind; the template is
notifications/email/<kind>.txt|.html and the subject is SUBJECTS[kind]. The
context may name another address than the recipient's (`to`: an email change
confirmed at the new address), and the app that asked for an email may add to
its context at render time (velro.signals.email_rendering): what must not rest
in the outbox row (a one-time code) is derived there, not stored.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import connection
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.utils import timezone

from notifications.models import EmailKind, EmailNotification, EmailStatus
from velro.celery import app as celery_app
from velro.db import db_params
from velro.signals import email_rendering
from velro.tasks import enqueue_on_commit

logger = logging.getLogger("velro.notifications")

SUBJECTS = {
    EmailKind.WELCOME: "Welcome to Velro",
    EmailKind.REFERRAL_CREDITED: "You referred {referred_name} to Velro",
    EmailKind.RECOVERY: "Reset your Velro password",
    EmailKind.MAGICLINK: "Your Velro sign-in code",
    EmailKind.CONFIRMATION: "Confirm your Velro email address",
    EmailKind.INVITE: "You have been invited to Velro",
    EmailKind.EMAIL_CHANGE: "Confirm your new Velro email address",
    EmailKind.REAUTHENTICATION: "Your Velro confirmation code",
    EmailKind.RECOVERY_CODE_USED: "A Velro recovery code was used",
}


# The send task (notifications/tasks.py), looked up by name: tasks call services, not the reverse.
SEND_EMAIL_TASK = "notifications.send_email"


def email_queue(*, kind: str, recipient_id: uuid.UUID, event_key: str, context: dict[str, Any]) -> int | None:
    """Record the email for an event, once, and send it after commit.

    One INSERT ... ON CONFLICT DO NOTHING: returns the new row's id, or None
    when this event's email was already recorded (and is sent by whoever
    recorded it).
    """
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
    enqueue_on_commit(celery_app.tasks[SEND_EMAIL_TASK], row[0])
    return row[0]


class EmailSendError(Exception):
    """The SMTP server refused or could not be reached: safe to retry (nothing was sent)."""


def _message(notification: EmailNotification) -> EmailMultiAlternatives:
    recipient = notification.recipient
    context = {**notification.context, "email": recipient.email}
    for _, added in email_rendering.send(sender=EmailNotification, kind=notification.kind, context=context):
        if added:
            context = {**context, **added}
    to = context.get("to") or recipient.email
    # One line whatever a display name contains: a header cannot be split.
    subject = " ".join(SUBJECTS[notification.kind].format(**context).split())
    text = render_to_string(f"notifications/email/{notification.kind}.txt", context)
    html = render_to_string(f"notifications/email/{notification.kind}.html", context)
    message = EmailMultiAlternatives(subject, text, settings.DEFAULT_FROM_EMAIL, [to])
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


def _retryable() -> Q:
    # "Failed" also covers a row still pending that has used up its
    # attempts: the sweep no longer picks it up either.
    return Q(status=EmailStatus.FAILED) | Q(status=EmailStatus.PENDING, attempts__gte=settings.EMAIL_MAX_ATTEMPTS)


def emails_retry(*, notification_ids: list[int]) -> int:
    """Operator action: failed emails (or pending ones out of attempts) back to pending, attempts reset.

    Conditional: a row that changed since the operator saw it is left alone.
    The send is nudged after commit; the sweep is the guarantee.
    """
    ids = list(EmailNotification.objects.filter(_retryable(), pk__in=notification_ids).values_list("pk", flat=True))
    changed = EmailNotification.objects.filter(_retryable(), pk__in=ids).update(
        status=EmailStatus.PENDING, attempts=0, claimed_at=None
    )
    for notification_id in ids:
        enqueue_on_commit(celery_app.tasks[SEND_EMAIL_TASK], notification_id)
    return changed


# --- the sweep ---------------------------------------------------------------------------------


def emails_sweep(*, min_age_seconds: int | None = None, limit: int = 500) -> dict[str, int]:
    """Send what a lost message left pending (broker down when it was queued). Runs every minute.

    Returns {"emails": sent, "interrupted": marked failed because they may have been delivered}.
    """
    now = timezone.now()
    age = settings.REFERRAL_SWEEP_MIN_AGE_SECONDS if min_age_seconds is None else min_age_seconds
    cutoff = now - timedelta(seconds=age)
    summary = {"emails": 0, "interrupted": 0}
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
    # Claimed and never marked sent, long after any task could still be on it:
    # interrupted mid-send, it may have been delivered, so it is not sent
    # again (at most once); operators see it as failed.
    lease = now - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT * 2)
    summary["interrupted"] = EmailNotification.objects.filter(
        status=EmailStatus.SENDING, smtp_started_at__isnull=False, claimed_at__lt=lease
    ).update(status=EmailStatus.FAILED, last_error="interrupted while sending; not resent (at most once)")
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
    if summary["interrupted"]:
        logger.warning("emails interrupted mid-send, marked failed: %s", summary["interrupted"])
    return summary
