"""Referral and email services, called directly (the real Celery worker suite is test_integration.py).

Signups go through the API. In these `django_db` tests on_commit never fires,
so nothing is enqueued: exactly the state a broker outage leaves behind, which
the services, the sweeper and the nightly sync must finish.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import asdict
from datetime import timedelta
from io import StringIO

import pytest
from django.core import mail
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import User
from accounts.tests.factories import UserFactory
from notifications import services as outbox
from notifications.models import EmailKind, EmailNotification, EmailStatus
from referrals import services, tasks
from referrals.models import (
    IntentStatus,
    Referral,
    ReferralCode,
    ReferralIntent,
    ReferralStatus,
    RejectReason,
)
from referrals.tests.factories import (
    ReferralFactory,
    ReferralIntentFactory,
    code_of,
    credited_count,
    refer,
    refer_rejected,
)
from velro.tests.support import run_concurrently, second_connection

pytestmark = pytest.mark.django_db(transaction=False)

SIGNUP = "/api/v1/auth/signup"
STRONG_PASSWORD = "plum-harbour-velvet-42"
LOCMEM = "django.core.mail.backends.locmem.EmailBackend"
SMTP = "django.core.mail.backends.smtp.EmailBackend"


@pytest.fixture
def locmem(settings):
    settings.EMAIL_BACKEND = LOCMEM
    mail.outbox = []
    return mail.outbox


@pytest.fixture
def referrer(db):
    return UserFactory(display_name="Rita Referrer")


def signup(api, email: str, **extra: object) -> dict:
    response = api.post(SIGNUP, {"email": email, "password": STRONG_PASSWORD, **extra}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def assert_counter_invariant(*users: User) -> None:
    """credited_count is exactly the number of credited referrals (what the nightly sync enforces)."""
    for user in users:
        actual = Referral.objects.filter(referrer=user, status=ReferralStatus.CREDITED).count()
        assert credited_count(user) == actual, user.email


def credited_emails(referrer: User) -> list[EmailNotification]:
    return list(EmailNotification.objects.filter(recipient=referrer, kind=EmailKind.REFERRAL_CREDITED))


def loosely(code: str) -> str:
    """`code` as a person might type it: lower case, O for 0, l for 1, a hyphen."""
    typed = code.replace("0", "O").replace("1", "l").lower()
    return f"{typed[:4]}-{typed[4:]}"


def statement_shape(sql: str) -> str:
    """What a statement does and to which table, without its values."""
    sql = sql.strip()
    match = re.match(r'(INSERT INTO|UPDATE|DELETE FROM)\s+"?(\w+)"?', sql)
    if match:
        return f'{match.group(1)} "{match.group(2)}"'
    if sql.startswith(("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")):
        return sql.rsplit(" ", 1)[0]
    if sql.startswith("WITH"):  # a CTE: name it by the tables it writes
        return "WITH " + " ".join(sorted(re.findall(r'(?:INSERT INTO|UPDATE)\s+"?(\w+)"?', sql)))
    match = re.match(r'SELECT\b.*?\bFROM\s+"?(\w+)"?', sql, re.S)
    if match:
        return f'SELECT "{match.group(1)}"'
    return sql.split()[0]


def signup_statements(api, email: str, **extra: object) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        signup(api, email, **extra)
    return [q["sql"] for q in queries.captured_queries]


# --- signup: the intent, on the request path ---------------------------------------------------


def test_signup_with_a_code_records_one_pending_intent_and_no_referral_yet(api, referrer):
    typed = loosely(code_of(referrer))
    body = signup(api, "new@example.com", referral_code=f"  {typed} ")
    referred_id = body["user"]["id"]
    intent = ReferralIntent.objects.get()
    assert str(intent.referred_id) == referred_id
    assert intent.code == typed  # as typed (trimmed): validated by the worker, not here
    assert intent.status == IntentStatus.PENDING
    assert intent.attempts == 0
    assert intent.processed_at is None
    assert not Referral.objects.exists()
    assert credited_count(referrer) == 0


def test_signup_without_a_code_records_no_intent(api):
    signup(api, "plain@example.com")
    assert not ReferralIntent.objects.exists()
    assert not Referral.objects.exists()


def test_signup_queues_the_welcome_email_in_its_own_transaction(api):
    body = signup(api, "welcome-me@example.com")
    email = EmailNotification.objects.get()
    assert email.event_key == f"welcome:{body['user']['id']}"
    assert email.kind == EmailKind.WELCOME
    assert email.status == EmailStatus.PENDING
    assert str(email.recipient_id) == body["user"]["id"]


def test_signup_with_a_code_costs_exactly_one_extra_insert(api, referrer):
    signup(api, "warm-up@example.com")  # first-request one-offs are not the signup's cost
    without = signup_statements(api, "without@example.com")
    with_code = signup_statements(api, "with@example.com", referral_code=code_of(referrer))
    extra = Counter(map(statement_shape, with_code)) - Counter(map(statement_shape, without))
    missing = Counter(map(statement_shape, without)) - Counter(map(statement_shape, with_code))
    assert extra == Counter({'INSERT INTO "referral_intents"': 1}), with_code
    assert not missing
    assert len(with_code) == len(without) + 1
    (intent_insert,) = [sql for sql in with_code if sql.startswith('INSERT INTO "referral_intents"')]
    assert "RETURNING" in intent_insert


def test_signup_with_a_code_does_not_look_the_code_up(api, referrer):
    statements = signup_statements(api, "nolookup@example.com", referral_code=code_of(referrer))
    code_statements = [sql for sql in statements if "referral_codes" in sql]
    # The new user's own code is inserted; nobody's code is read or validated.
    assert len(code_statements) == 1, code_statements
    assert code_statements[0].startswith("INSERT INTO referral_codes")
    assert not any(sql.startswith("SELECT") and "referral_codes" in sql for sql in statements)
    assert not any('"referrals"' in sql for sql in statements)


@pytest.mark.parametrize(
    ("referral_code", "recorded"),
    [
        (["ABCD2345"], False),
        (12345678, False),
        (1.5, False),
        (True, False),
        ({"code": "ABCD2345"}, False),
        (None, False),
        ("", False),
        ("   ", False),
        ("Z" * 200, False),
        ("nope!!", True),  # a string: recorded, rejected later as malformed
        ("ZZZZZZZZ", True),  # well-formed but nobody's: rejected later as unknown
    ],
    ids=["list", "int", "float", "bool", "object", "null", "empty", "blank", "200-chars", "malformed", "unknown"],
)
def test_garbage_referral_codes_never_fail_signup(api, referral_code, recorded):
    body = signup(api, "garbage@example.com", referral_code=referral_code)
    assert body["user"]["email"] == "garbage@example.com"
    assert ReferralIntent.objects.filter(referred_id=body["user"]["id"]).exists() is recorded


# --- processing an intent (the worker's job) ---------------------------------------------------


def test_a_valid_code_is_credited_with_one_email_to_the_referrer(referrer):
    referred = UserFactory(display_name="Nina New")
    intent = ReferralIntentFactory(referred=referred, code=code_of(referrer))
    assert services.referral_intent_process(intent_id=intent.pk) == "credited"

    referral = Referral.objects.get(referred=referred)
    assert referral.referrer_id == referrer.pk
    assert referral.status == ReferralStatus.CREDITED
    assert referral.reason == ""
    assert referral.code == code_of(referrer)
    assert referral.credited_at is not None
    assert credited_count(referrer) == 1

    intent.refresh_from_db()
    assert intent.status == IntentStatus.DONE
    assert intent.attempts == 1
    assert intent.processed_at is not None

    (email,) = credited_emails(referrer)
    assert email.event_key == f"referral_credited:{referral.pk}"
    assert email.status == EmailStatus.PENDING
    assert email.context == {"referred_name": "Nina New"}
    assert not EmailNotification.objects.exclude(pk=email.pk).exists()


def test_a_loosely_typed_code_is_credited_to_its_owner(referrer):
    intent = ReferralIntentFactory(code=f" {loosely(code_of(referrer))} ")
    assert services.referral_intent_process(intent_id=intent.pk) == "credited"
    referral = Referral.objects.get(referred=intent.referred)
    assert referral.referrer_id == referrer.pk
    assert referral.code == f" {loosely(code_of(referrer))} "  # the record keeps what was typed
    assert credited_count(referrer) == 1


@pytest.mark.parametrize(
    ("case", "reason"),
    [("unknown", RejectReason.UNKNOWN), ("malformed", RejectReason.MALFORMED), ("own", RejectReason.OWN)],
)
def test_invalid_codes_are_rejected_with_a_reason_and_credit_nobody(referrer, case, reason):
    referred = UserFactory()
    code = {"unknown": "ZZZZ-ZZZZ", "malformed": "not a code!", "own": loosely(code_of(referred))}[case]
    assert not ReferralCode.objects.filter(code="ZZZZZZZZ").exists()
    intent = ReferralIntentFactory(referred=referred, code=code)

    assert services.referral_intent_process(intent_id=intent.pk) == ReferralStatus.REJECTED

    referral = Referral.objects.get(referred=referred)
    assert referral.status == ReferralStatus.REJECTED
    assert referral.reason == reason
    assert referral.referrer is None
    assert referral.credited_at is None
    assert referral.code == code
    assert set(ReferralCode.objects.values_list("credited_count", flat=True)) == {0}
    assert not EmailNotification.objects.exists()
    intent.refresh_from_db()
    assert intent.status == IntentStatus.DONE


def test_a_run_interrupted_before_the_credit_is_finished_by_the_next_run(referrer):
    intent = ReferralIntentFactory(code=code_of(referrer))
    # What an interrupted run leaves: the intent done, its referral still pending.
    Referral.objects.create(referrer=referrer, referred_id=intent.referred_id, code=intent.code)
    ReferralIntent.objects.filter(pk=intent.pk).update(status=IntentStatus.DONE, attempts=1)

    assert services.referral_intent_process(intent_id=intent.pk) == "resumed"
    assert Referral.objects.get().status == ReferralStatus.CREDITED
    assert ReferralCode.objects.get(user=referrer).credited_count == 1
    assert EmailNotification.objects.filter(kind=EmailKind.REFERRAL_CREDITED).count() == 1
    assert services.referral_intent_process(intent_id=intent.pk) == "skipped"
    assert ReferralCode.objects.get(user=referrer).credited_count == 1


def test_processing_an_intent_twice_changes_nothing_the_second_time(referrer):
    intent = ReferralIntentFactory(code=code_of(referrer))
    assert services.referral_intent_process(intent_id=intent.pk) == "credited"
    referral = Referral.objects.get()
    intent.refresh_from_db()
    before = (referral.updated_at, referral.credited_at, intent.processed_at, intent.attempts)

    assert services.referral_intent_process(intent_id=intent.pk) == "skipped"

    referral.refresh_from_db()
    intent.refresh_from_db()
    assert (referral.updated_at, referral.credited_at, intent.processed_at, intent.attempts) == before
    assert credited_count(referrer) == 1
    assert Referral.objects.count() == 1
    assert len(credited_emails(referrer)) == 1


def test_a_rejected_intent_processed_twice_is_skipped_too():
    intent = ReferralIntentFactory(code="nope")
    assert services.referral_intent_process(intent_id=intent.pk) == ReferralStatus.REJECTED
    assert services.referral_intent_process(intent_id=intent.pk) == "skipped"
    assert Referral.objects.count() == 1


def test_processing_an_intent_that_does_not_exist_is_skipped():
    assert services.referral_intent_process(intent_id=987654321) == "skipped"
    assert not Referral.objects.exists()


def test_the_task_runs_the_service_and_is_idempotent(referrer):
    intent = ReferralIntentFactory(code=code_of(referrer))
    assert tasks.process_referral_intent(intent.pk) == "credited"
    assert tasks.process_referral_intent(intent.pk) == "skipped"  # a duplicate delivery
    assert credited_count(referrer) == 1
    assert len(credited_emails(referrer)) == 1


def test_the_intent_task_acks_late_retries_with_backoff_and_has_time_limits():
    task = tasks.process_referral_intent
    assert task.acks_late is True
    assert task.reject_on_worker_lost is True
    assert task.retry_backoff and task.retry_jitter is True
    assert task.retry_backoff_max <= 600
    assert task.max_retries >= 3
    assert task.autoretry_for
    assert task.soft_time_limit and task.time_limit and task.soft_time_limit < task.time_limit


# --- crediting ---------------------------------------------------------------------------------


def test_crediting_a_referral_twice_credits_it_once(referrer):
    referral = ReferralFactory(referrer=referrer)
    assert services.referral_credit(referral_id=referral.pk) is True
    assert services.referral_credit(referral_id=referral.pk) is False
    assert credited_count(referrer) == 1
    assert len(credited_emails(referrer)) == 1
    referral.refresh_from_db()
    assert referral.status == ReferralStatus.CREDITED


@pytest.mark.parametrize("status", [ReferralStatus.REJECTED, ReferralStatus.CREDITED])
def test_only_a_pending_referral_can_be_credited(referrer, status):
    referral = ReferralFactory(referrer=referrer, status=status)
    assert services.referral_credit(referral_id=referral.pk) is False
    assert credited_count(referrer) == 0
    assert not EmailNotification.objects.exists()


def test_a_referral_without_a_referrer_is_never_credited():
    referral = ReferralFactory(referrer=None, code="ZZZZZZZZ")
    assert services.referral_credit(referral_id=referral.pk) is False
    referral.refresh_from_db()
    assert referral.status == ReferralStatus.PENDING
    assert set(ReferralCode.objects.values_list("credited_count", flat=True)) == {0}


# --- operator actions: reject and reprocess -------------------------------------------------------


def test_rejecting_a_credited_referral_gives_the_credit_back(referrer):
    kept = refer(referrer)
    rejected = refer(referrer)
    assert credited_count(referrer) == 2
    assert services.referral_reject(referral_id=rejected.pk) is True
    rejected.refresh_from_db()
    assert (rejected.status, rejected.reason) == (ReferralStatus.REJECTED, RejectReason.OPERATOR)
    assert rejected.referrer_id == referrer.pk  # still shows who it was
    assert credited_count(referrer) == 1
    assert Referral.objects.get(pk=kept.pk).status == ReferralStatus.CREDITED
    assert_counter_invariant(referrer)


def test_rejecting_twice_changes_nothing_the_second_time(referrer):
    referral = refer(referrer)
    assert services.referral_reject(referral_id=referral.pk) is True
    assert services.referral_reject(referral_id=referral.pk) is False
    assert credited_count(referrer) == 0
    assert_counter_invariant(referrer)


def test_rejecting_a_pending_referral_leaves_the_counter_alone(referrer):
    refer(referrer)
    pending = ReferralFactory(referrer=referrer)
    assert services.referral_reject(referral_id=pending.pk) is True
    assert credited_count(referrer) == 1
    # ... and the sweeper will not credit it later.
    assert services.referral_credit(referral_id=pending.pk) is False
    assert_counter_invariant(referrer)


def test_rejecting_an_unknown_referral_is_false():
    assert services.referral_reject(referral_id="00000000-0000-0000-0000-000000000000") is False


def test_reprocessing_an_operator_rejected_referral_with_a_valid_code_credits_it_again(referrer):
    referral = refer_rejected(referrer)
    assert credited_count(referrer) == 0
    assert services.referral_reprocess(referral_id=referral.pk) == "credited"
    referral.refresh_from_db()
    assert (referral.status, referral.reason) == (ReferralStatus.CREDITED, "")
    assert referral.referrer_id == referrer.pk
    assert credited_count(referrer) == 1
    # The "you referred X" email is one per referral: not sent a second time.
    assert len(credited_emails(referrer)) == 1
    assert_counter_invariant(referrer)


def test_reprocessing_a_credited_referral_is_skipped(referrer):
    referral = refer(referrer)
    assert services.referral_reprocess(referral_id=referral.pk) == "skipped"
    assert credited_count(referrer) == 1


def test_reprocessing_an_unknown_code_keeps_it_rejected(referrer):
    referral = refer(None, code="ZZZZZZZZ")
    assert services.referral_reprocess(referral_id=referral.pk) == ReferralStatus.REJECTED
    referral.refresh_from_db()
    assert (referral.status, referral.reason, referral.referrer) == (
        ReferralStatus.REJECTED,
        RejectReason.UNKNOWN,
        None,
    )
    assert credited_count(referrer) == 0


def test_reprocessing_a_code_whose_owner_now_exists_credits_it():
    # The owner's code row was missing when the intent ran (created outside the
    # signals); the nightly sync gives them a code, and a reprocess then counts it.
    owner = UserFactory()
    code = code_of(owner)
    ReferralCode.objects.filter(user=owner).delete()
    referral = refer(None, code=code)
    assert referral.reason == RejectReason.UNKNOWN
    ReferralCode.objects.create(user=owner, code=code)
    assert services.referral_reprocess(referral_id=referral.pk) == "credited"
    assert Referral.objects.get(pk=referral.pk).referrer_id == owner.pk
    assert credited_count(owner) == 1


# --- the emails referrals queue (the outbox itself: notifications/tests) ---------------------------


def test_referral_credited_email_falls_back_to_the_email_name(referrer, locmem):
    referral = refer(referrer, email="quiet.person@example.com", display_name="")
    row = EmailNotification.objects.get(event_key=f"referral_credited:{referral.pk}")
    outbox.email_send(notification_id=row.pk)
    assert locmem[0].subject == "You referred quiet.person to Velro"
    assert "quiet.person@" not in locmem[0].body  # the referred user's address is not disclosed


def test_a_name_with_a_line_break_does_not_block_the_referrers_email(referrer, locmem):
    referral = refer(referrer, display_name="Eve\nBcc: everyone@example.com")
    row = EmailNotification.objects.get(event_key=f"referral_credited:{referral.pk}")
    assert outbox.email_send(notification_id=row.pk) == "sent"
    (message,) = locmem
    assert "\n" not in message.subject
    assert message.recipients() == [referrer.email]


# --- the sweeper -------------------------------------------------------------------------------


def test_sweep_processes_pending_intents_and_the_outbox_sweep_sends_their_emails(api, locmem):
    # Signups whose enqueue never happened (on_commit does not fire here: as
    # if the broker was down): the intents and emails are only in Postgres.
    rita = signup(api, "rita@example.com")
    nina = signup(api, "nina@example.com", referral_code=rita["user"]["referral_code"].lower())
    assert ReferralIntent.objects.get().status == IntentStatus.PENDING

    assert services.referrals_sweep(min_age_seconds=0) == {"intents": 1, "credited": 1}
    assert locmem == []  # the emails are the outbox's sweep's
    # The two welcome emails and the "you referred" email recorded by the credit.
    assert outbox.emails_sweep(min_age_seconds=0) == {"emails": 3, "interrupted": 0}
    referral = Referral.objects.get()
    assert str(referral.referred_id) == nina["user"]["id"]
    assert str(referral.referrer_id) == rita["user"]["id"]
    assert referral.status == ReferralStatus.CREDITED
    assert ReferralCode.objects.get(user_id=rita["user"]["id"]).credited_count == 1
    sent = sorted((m.to[0], m.subject) for m in locmem)
    assert sent == [
        ("nina@example.com", "Welcome to Velro"),
        ("rita@example.com", "Welcome to Velro"),
        ("rita@example.com", "You referred nina to Velro"),
    ]
    assert set(EmailNotification.objects.values_list("status", flat=True)) == {EmailStatus.SENT}

    # Nothing left: second sweeps do nothing and send nothing.
    assert services.referrals_sweep(min_age_seconds=0) == {"intents": 0, "credited": 0}
    assert outbox.emails_sweep(min_age_seconds=0) == {"emails": 0, "interrupted": 0}
    assert len(locmem) == 3


def test_the_sweep_task_leaves_fresh_work_to_the_workers(api, locmem, settings):
    settings.REFERRAL_SWEEP_MIN_AGE_SECONDS = 30
    rita = signup(api, "rita@example.com")
    signup(api, "nina@example.com", referral_code=rita["user"]["referral_code"])
    assert tasks.sweep() == {"intents": 0, "credited": 0}
    assert ReferralIntent.objects.get().status == IntentStatus.PENDING

    ReferralIntent.objects.update(created_at=timezone.now() - timedelta(minutes=5))
    EmailNotification.objects.update(created_at=timezone.now() - timedelta(minutes=5))
    assert tasks.sweep() == {"intents": 1, "credited": 1}
    assert outbox.emails_sweep() == {"emails": 2, "interrupted": 0}  # the new credit's email is fresh


def test_sweep_credits_a_referral_whose_credit_was_lost(referrer, locmem):
    referral = ReferralFactory(referrer=referrer)
    summary = services.referrals_sweep(min_age_seconds=0)
    assert summary["credited"] == 1
    assert Referral.objects.get(pk=referral.pk).status == ReferralStatus.CREDITED
    assert credited_count(referrer) == 1


# --- the nightly sync -----------------------------------------------------------------------------


def test_reconcile_repairs_drift_and_finishes_pending_work_and_a_second_run_fixes_nothing(locmem):
    now = timezone.now()
    alice, bob = UserFactory(email="alice@example.com"), UserFactory(email="bob@example.com")
    refer(alice)
    refer(alice)
    ReferralCode.objects.filter(user=alice).update(credited_count=7)  # drifted up
    ReferralFactory(referrer=bob, status=ReferralStatus.CREDITED, credited_at=now)  # counter still 0: drifted down
    pending_intent = ReferralIntentFactory(code=loosely(code_of(alice)))  # its message was lost
    lost_credit = ReferralFactory(referrer=alice)  # recorded, never credited
    bulk = User.objects.bulk_create([User(email=f"bulk{i}@example.com", password="!") for i in range(2)])
    emails_before = set(EmailNotification.objects.values_list("pk", flat=True))

    report = services.referrals_reconcile()

    assert report.intents_examined == 1
    assert report.intents_processed == 1
    assert report.referrals_credited == 2  # the pending intent and the lost credit
    assert report.codes_created == 2
    assert report.counters_examined == User.objects.count()
    assert report.counters_fixed == 2
    # Referrals only: the users mirror is accounts' job (accounts.repair_mirror),
    # sending is the outbox's; the two new "you referred" emails are queued.
    assert set(asdict(report)) == {
        "intents_examined",
        "intents_processed",
        "referrals_credited",
        "counters_examined",
        "counters_fixed",
        "codes_created",
    }
    new_emails = EmailNotification.objects.exclude(pk__in=emails_before)
    assert sorted(new_emails.values_list("kind", "status")) == [(EmailKind.REFERRAL_CREDITED, EmailStatus.PENDING)] * 2
    assert locmem == []

    assert ReferralIntent.objects.get(pk=pending_intent.pk).status == IntentStatus.DONE
    assert Referral.objects.get(pk=lost_credit.pk).status == ReferralStatus.CREDITED
    assert credited_count(alice) == 4
    assert credited_count(bob) == 1
    assert_counter_invariant(alice, bob, *User.objects.all())
    for user in bulk:
        assert ReferralCode.objects.filter(user_id=user.pk).exists()

    again = services.referrals_reconcile()
    assert again.intents_processed == again.referrals_credited == 0
    assert again.codes_created == again.counters_fixed == 0
    assert EmailNotification.objects.exclude(pk__in=emails_before).count() == 2


def test_reconcile_never_leaves_a_counter_negative_or_off(referrer, locmem):
    referral = refer(referrer)
    ReferralCode.objects.filter(user=referrer).update(credited_count=0)  # drifted
    services.referral_reject(referral_id=referral.pk)  # the guard keeps it at 0, not -1
    assert credited_count(referrer) == 0
    services.referrals_reconcile()
    assert_counter_invariant(referrer)


def test_the_nightly_sync_task_returns_the_report(referrer, locmem):
    ReferralCode.objects.filter(user=referrer).update(credited_count=3)
    report = tasks.nightly_sync()
    assert report["counters_fixed"] == 1
    assert set(report) >= {"intents_examined", "intents_processed", "counters_examined", "counters_fixed"}


def test_the_nightly_sync_is_on_the_beat_schedule(settings):
    entries = {entry["task"]: entry["schedule"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    hour, minute = (int(part) for part in settings.REFERRAL_SYNC_TIME.split(":"))
    nightly = entries["referrals.nightly_sync"]
    assert nightly.hour == {hour}
    assert nightly.minute == {minute}
    assert "referrals.sweep" in entries
    # The users mirror repair is accounts' nightly job now, at the same time.
    mirror = entries["accounts.repair_mirror"]
    assert (mirror.hour, mirror.minute) == ({hour}, {minute})


def test_sync_referrals_command_prints_the_summary(referrer, locmem):
    ReferralCode.objects.filter(user=referrer).update(credited_count=5)
    ReferralIntentFactory(code=code_of(referrer))
    out = StringIO()
    call_command("sync_referrals", stdout=out)
    lines = out.getvalue().splitlines()
    assert "intents_examined: 1" in lines
    assert "intents_processed: 1" in lines
    assert "referrals_credited: 1" in lines
    assert "counters_fixed: 1" in lines
    assert "codes_created: 0" in lines
    assert any(line.startswith("counters_examined: ") for line in lines)
    assert not any(line.startswith(("mirrors_", "emails_")) for line in lines)  # referrals only
    assert lines[-1].endswith("sync_referrals: done")
    assert credited_count(referrer) == 1


# --- concurrency: row claims on a real second connection ------------------------------------------


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_an_intent_locked_by_another_worker_is_skipped_without_waiting():
    referrer = UserFactory()
    intent = ReferralIntentFactory(code=code_of(referrer))
    with second_connection(app_timeouts=False, connect_timeout=3) as other:
        other.execute("SELECT id FROM referral_intents WHERE id = %s FOR UPDATE", [intent.pk])
        started = time.monotonic()
        outcome = services.referral_intent_process(intent_id=intent.pk)
        elapsed = time.monotonic() - started
        # The nightly sync, running while a worker holds the row, leaves it too.
        report = services.referrals_reconcile()
        other.rollback()
    assert outcome == "skipped"
    assert elapsed < 0.5  # SKIP LOCKED: no wait (lock_timeout would have raised after 1 s)
    assert report.intents_examined == 1
    assert report.intents_processed == 0
    assert not Referral.objects.exists()
    assert ReferralIntent.objects.get(pk=intent.pk).attempts == 0

    # The lock is released: the next attempt processes it.
    assert services.referral_intent_process(intent_id=intent.pk) == "credited"
    assert credited_count(referrer) == 1


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_concurrent_processing_of_one_intent_credits_it_once():
    referrer = UserFactory()
    intent = ReferralIntentFactory(code=code_of(referrer))
    outcomes = run_concurrently(lambda: services.referral_intent_process(intent_id=intent.pk))
    assert sorted(outcomes) == ["credited"] + ["skipped"] * 5
    assert credited_count(referrer) == 1
    assert Referral.objects.count() == 1
    assert EmailNotification.objects.filter(kind=EmailKind.REFERRAL_CREDITED).count() == 1


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_concurrent_credits_of_one_referral_count_once():
    referrer = UserFactory()
    referral = ReferralFactory(referrer=referrer)
    outcomes = run_concurrently(lambda: services.referral_credit(referral_id=referral.pk))
    assert sorted(outcomes) == [False] * 5 + [True]
    assert credited_count(referrer) == 1
    assert EmailNotification.objects.filter(kind=EmailKind.REFERRAL_CREDITED).count() == 1
