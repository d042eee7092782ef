"""The email outbox: queue once, send at most once, the sweep, the send task.

(Moved from referrals/tests/test_services.py with the outbox; what causes an
email, e.g. a signup or a credited referral, is tested by the app that queues it.)
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.template.loader import render_to_string
from django.test.signals import template_rendered
from django.utils import timezone

from notifications import services, tasks
from notifications.models import EmailKind, EmailNotification, EmailStatus
from notifications.tests.factories import EmailNotificationFactory, RecipientFactory
from velro.tests.support import run_concurrently

pytestmark = pytest.mark.django_db(transaction=False)

LOCMEM = "django.core.mail.backends.locmem.EmailBackend"
SMTP = "django.core.mail.backends.smtp.EmailBackend"


@pytest.fixture
def locmem(settings):
    settings.EMAIL_BACKEND = LOCMEM
    mail.outbox = []
    return mail.outbox


@pytest.fixture
def smtp_down(settings):
    """A real SMTP backend pointed at a port where nothing listens."""
    settings.EMAIL_BACKEND = SMTP
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = 1
    settings.EMAIL_TIMEOUT = 2


@pytest.fixture
def rendered_templates():
    names: list[str] = []

    def record(sender, template, context, **kwargs):
        names.append(template.name)

    template_rendered.connect(record)
    yield names
    template_rendered.disconnect(record)


def welcome(recipient) -> int | None:
    return services.email_queue(
        kind=EmailKind.WELCOME,
        recipient_id=recipient.pk,
        event_key=f"welcome:{recipient.pk}",
        context={"name": recipient.display_name or recipient.email},
    )


def credited(recipient, referred_name: str, key: str = "r1") -> int | None:
    return services.email_queue(
        kind=EmailKind.REFERRAL_CREDITED,
        recipient_id=recipient.pk,
        event_key=f"referral_credited:{key}",
        context={"referred_name": referred_name},
    )


# --- queueing and sending --------------------------------------------------------------------------


def test_an_email_is_sent_once_and_a_second_send_is_skipped(locmem):
    notification_id = welcome(RecipientFactory())
    assert services.email_send(notification_id=notification_id) == "sent"
    assert services.email_send(notification_id=notification_id) == "skipped"
    assert tasks.send_email(notification_id) == "skipped"
    assert len(locmem) == 1
    row = EmailNotification.objects.get(pk=notification_id)
    assert row.status == EmailStatus.SENT
    assert row.attempts == 1
    assert row.sent_at is not None


def test_queueing_the_same_event_twice_records_one_email():
    recipient = RecipientFactory()
    assert welcome(recipient) is not None
    assert welcome(recipient) is None
    assert EmailNotification.objects.filter(event_key=f"welcome:{recipient.pk}").count() == 1


def test_queueing_enqueues_the_send_task_on_commit(django_capture_on_commit_callbacks, monkeypatch):
    sent = []
    monkeypatch.setattr("velro.tasks.enqueue", lambda task, *args: sent.append((task.name, args)) or True)
    recipient = RecipientFactory()
    with django_capture_on_commit_callbacks(execute=True):
        notification_id = welcome(recipient)
    assert sent == [("notifications.send_email", (notification_id,))]


def test_a_failed_send_hands_the_row_back_for_a_retry(smtp_down, settings):
    notification_id = welcome(RecipientFactory())
    with pytest.raises(services.EmailSendError):
        services.email_send(notification_id=notification_id)
    row = EmailNotification.objects.get(pk=notification_id)
    assert row.status == EmailStatus.PENDING
    assert row.attempts == 1
    assert row.last_error.startswith("ConnectionRefusedError")
    assert row.sent_at is None

    # The SMTP server is back: the retry sends it, once.
    settings.EMAIL_BACKEND = LOCMEM
    mail.outbox = []
    assert services.email_send(notification_id=notification_id) == "sent"
    assert len(mail.outbox) == 1
    row.refresh_from_db()
    assert (row.status, row.attempts) == (EmailStatus.SENT, 2)


def test_emails_that_use_up_their_attempts_are_marked_failed(smtp_down, settings):
    # So operators see them (and can retry them from the admin): the sweeper
    # stops picking a row up once it has used EMAIL_MAX_ATTEMPTS.
    settings.EMAIL_MAX_ATTEMPTS = 2
    notification_id = welcome(RecipientFactory())
    for _ in range(3):
        services.emails_sweep(min_age_seconds=0)
    row = EmailNotification.objects.get(pk=notification_id)
    assert row.attempts == 2
    assert row.status == EmailStatus.FAILED
    assert row.last_error


def test_email_give_up_marks_a_pending_email_failed():
    notification = EmailNotificationFactory()
    services.email_give_up(notification_id=notification.pk, error="x" * 500)
    notification.refresh_from_db()
    assert notification.status == EmailStatus.FAILED
    assert len(notification.last_error) == 300


# --- the messages --------------------------------------------------------------------------------


def test_welcome_email_has_text_and_html_parts_from_the_templates(locmem, settings, rendered_templates):
    recipient = RecipientFactory(email="Wendy.Welcome@example.com", display_name="")
    notification_id = welcome(recipient)
    assert services.email_send(notification_id=notification_id) == "sent"

    (message,) = locmem
    assert message.subject == "Welcome to Velro"
    assert message.from_email == settings.DEFAULT_FROM_EMAIL
    assert message.to == ["Wendy.Welcome@example.com"]
    assert message.extra_headers["X-Velro-Event"] == f"welcome:{recipient.pk}"
    context = {"name": "Wendy.Welcome@example.com", "email": "Wendy.Welcome@example.com"}
    assert message.body == render_to_string("notifications/email/welcome.txt", context)
    assert "Welcome to Velro!" in message.body
    assert "<" not in message.body
    ((html, mimetype),) = message.alternatives
    assert mimetype == "text/html"
    assert html == render_to_string("notifications/email/welcome.html", context)
    assert "<strong>Velro</strong>" in html
    assert {"notifications/email/welcome.txt", "notifications/email/welcome.html"} <= set(rendered_templates)


def test_referral_credited_email_names_the_referred_user(locmem, settings, rendered_templates):
    recipient = RecipientFactory()
    notification_id = credited(recipient, "Nina New")
    assert services.email_send(notification_id=notification_id) == "sent"

    (message,) = locmem
    assert message.subject == "You referred Nina New to Velro"
    assert message.from_email == settings.DEFAULT_FROM_EMAIL
    assert message.to == [recipient.email]
    assert "Nina New signed up to Velro with your referral code" in message.body
    ((html, mimetype),) = message.alternatives
    assert mimetype == "text/html"
    assert "<strong>Nina New</strong>" in html
    assert {"notifications/email/referral_credited.txt", "notifications/email/referral_credited.html"} <= set(
        rendered_templates
    )


def test_names_are_escaped_in_html_but_literal_in_the_plain_text_part(locmem):
    notification_id = credited(RecipientFactory(), "Zoë O'Brien & <Co>")
    services.email_send(notification_id=notification_id)
    (message,) = locmem
    assert message.subject == "You referred Zoë O'Brien & <Co> to Velro"
    ((html, _),) = message.alternatives
    assert "Zoë O&#x27;Brien &amp; &lt;Co&gt;" in html
    assert "<Co>" not in html
    assert "Zoë O'Brien & <Co> signed up" in message.body  # plain text: no HTML entities


def test_a_name_with_a_line_break_does_not_block_the_email(locmem):
    recipient = RecipientFactory()
    notification_id = credited(recipient, "Eve\nBcc: everyone@example.com")
    assert services.email_send(notification_id=notification_id) == "sent"
    (message,) = locmem
    assert "\n" not in message.subject
    assert message.recipients() == [recipient.email]


# --- the tasks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("task", [tasks.send_email, tasks.send_email_legacy])
def test_the_send_tasks_ack_late_retry_with_backoff_and_have_time_limits(task):
    assert task.acks_late is True
    assert task.reject_on_worker_lost is True
    assert task.retry_backoff and task.retry_jitter is True
    assert task.retry_backoff_max <= 600
    assert task.max_retries >= 3
    assert task.autoretry_for
    assert task.soft_time_limit and task.time_limit and task.soft_time_limit < task.time_limit


def test_the_old_task_name_still_sends_messages_queued_before_the_move(locmem):
    # Messages already in the broker under "referrals.send_email" (and their retries) still run.
    from velro.celery import app

    assert (tasks.send_email.name, tasks.send_email_legacy.name) == ("notifications.send_email", "referrals.send_email")
    notification_id = welcome(RecipientFactory())
    assert app.tasks["referrals.send_email"](notification_id) == "sent"
    assert app.tasks["notifications.send_email"](notification_id) == "skipped"
    assert len(locmem) == 1


def test_the_sweep_is_on_the_beat_schedule(settings):
    entries = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "notifications.sweep" in entries


# --- the sweep -----------------------------------------------------------------------------------


def test_sweep_sends_pending_emails_once(locmem):
    # Emails whose enqueue never happened (on_commit does not fire here: as if
    # the broker was down): they are only in the database.
    first, second = welcome(RecipientFactory()), welcome(RecipientFactory())
    assert services.emails_sweep(min_age_seconds=0) == {"emails": 2, "interrupted": 0}
    assert set(EmailNotification.objects.filter(pk__in=[first, second]).values_list("status", flat=True)) == {
        EmailStatus.SENT
    }
    assert services.emails_sweep(min_age_seconds=0) == {"emails": 0, "interrupted": 0}
    assert len(locmem) == 2


def test_the_sweep_task_leaves_fresh_emails_to_the_workers(locmem, settings):
    settings.REFERRAL_SWEEP_MIN_AGE_SECONDS = 30
    welcome(RecipientFactory())
    assert tasks.sweep() == {"emails": 0, "interrupted": 0}
    assert locmem == []
    EmailNotification.objects.update(created_at=timezone.now() - timedelta(minutes=5))
    assert tasks.sweep() == {"emails": 1, "interrupted": 0}


def test_a_claim_that_died_before_smtp_started_is_sent_again_by_the_sweep(locmem, settings):
    old_claim = timezone.now() - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 5)
    lost = EmailNotificationFactory(status=EmailStatus.SENDING, attempts=1, claimed_at=old_claim)
    mid_smtp = EmailNotificationFactory(
        status=EmailStatus.SENDING, attempts=1, claimed_at=old_claim, smtp_started_at=old_claim
    )

    summary = services.emails_sweep(min_age_seconds=0)

    assert EmailNotification.objects.get(pk=lost.pk).status == EmailStatus.SENT
    assert summary["emails"] == 1
    # It may have been delivered: at most once means it is not sent again.
    assert EmailNotification.objects.get(pk=mid_smtp.pk).status == EmailStatus.SENDING
    assert len(locmem) == 1


def test_an_email_interrupted_mid_send_is_marked_failed_not_resent(locmem, settings):
    # (What the nightly referral sync used to do; the outbox's sweep does it now.)
    now = timezone.now()
    old_claim = now - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT * 2 + 60)
    interrupted = EmailNotificationFactory(
        status=EmailStatus.SENDING, attempts=1, claimed_at=old_claim, smtp_started_at=old_claim
    )
    in_flight = EmailNotificationFactory(status=EmailStatus.SENDING, attempts=1, claimed_at=now)

    assert services.emails_sweep(min_age_seconds=0) == {"emails": 0, "interrupted": 1}

    interrupted.refresh_from_db()
    assert interrupted.status == EmailStatus.FAILED
    assert "interrupted" in interrupted.last_error
    assert EmailNotification.objects.get(pk=in_flight.pk).status == EmailStatus.SENDING  # a worker may still be on it
    assert services.emails_sweep(min_age_seconds=0) == {"emails": 0, "interrupted": 0}
    assert locmem == []


def test_sweep_stops_sending_when_the_smtp_server_is_down(smtp_down):
    rows = EmailNotificationFactory.create_batch(3)
    summary = services.emails_sweep(min_age_seconds=0)
    assert summary["emails"] == 0
    attempts = sorted(EmailNotification.objects.filter(pk__in=[r.pk for r in rows]).values_list("attempts", flat=True))
    assert attempts == [0, 0, 1]  # one failure, then it waits for the next sweep
    assert set(EmailNotification.objects.values_list("status", flat=True)) == {EmailStatus.PENDING}


# --- concurrency -----------------------------------------------------------------------------------


@pytest.mark.postgresql  # row claims racing: SQLite's in-memory test database refuses, it does not wait
@pytest.mark.django_db(transaction=True)
def test_concurrent_sends_of_one_email_send_it_once(settings):
    settings.EMAIL_BACKEND = LOCMEM
    mail.outbox = []
    notification = EmailNotificationFactory()
    outcomes = run_concurrently(lambda: services.email_send(notification_id=notification.pk))
    assert sorted(outcomes) == ["sent"] + ["skipped"] * 5
    assert len(mail.outbox) == 1
