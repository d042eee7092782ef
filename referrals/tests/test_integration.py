"""Referrals and emails end to end: a real Celery worker on the real Redis broker,
a real SMTP listener, the real test database. Nothing here is mocked or eager.

Every wait is a bounded poll; see referrals/tests/conftest.py for the fixtures.
"""

from __future__ import annotations

import ast
import os
import secrets
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from rest_framework.test import APIClient

from accounts.tests.factories import UserFactory
from notifications.models import EmailKind, EmailNotification, EmailStatus
from notifications.tasks import send_email
from notifications.tasks import sweep as emails_sweep
from referrals import services
from referrals.codes import ALPHABET
from referrals.models import (
    IntentStatus,
    Referral,
    ReferralCode,
    ReferralIntent,
    ReferralStatus,
    RejectReason,
)
from referrals.tasks import nightly_sync, process_referral_intent, sweep
from referrals.tests.conftest import (
    WORKER_VISIBILITY_TIMEOUT,
    Worker,
    broker_unacked_delivered_at,
    wait_until,
)
from velro import tasks as velro_tasks
from velro.celery import app as celery_app
from velro.tests.support import second_connection

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SIGNUP = "/api/v1/auth/signup"
REFERRALS_ME = "/api/v1/referrals/me"
STRONG = "violet tractor umbrella 42"
WELCOME = "Welcome to Velro"
TASK_NAMES = (
    "referrals.process_intent",
    "notifications.send_email",
    "referrals.send_email",  # the send task's name before the outbox moved (an alias)
    "referrals.sweep",
    "notifications.sweep",
    "referrals.nightly_sync",
)


def _signup(email: str, code: str | None = None) -> dict:
    payload = {"email": email, "password": STRONG}
    if code is not None:
        payload["referral_code"] = code
    response = APIClient().post(SIGNUP, payload, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _credited_count(user_id: object) -> int:
    return ReferralCode.objects.get(user_id=user_id).credited_count


def _parts(message) -> dict[str, str]:
    return {
        part.get_content_type(): part.get_payload(decode=True).decode()
        for part in message.walk()
        if not part.is_multipart()
    }


def _unused_code() -> str:
    while True:
        code = "".join(secrets.choice(ALPHABET) for _ in range(8))
        if not ReferralCode.objects.filter(code=code).exists():
            return code


def _settled(*workers: Worker, quiet: float = 0.5, timeout: float = 15.0) -> None:
    """Wait until every task each worker received has finished, and nothing new came for `quiet` s.

    Used before asserting "exactly one": a duplicate would have had time to arrive.
    """

    def finished() -> tuple[int, ...] | None:
        state = []
        for worker in workers:
            for name in TASK_NAMES:
                received = worker.task_ids(name, "received")
                done = set(worker.task_ids(name, "succeeded")) | set(worker.task_ids(name, "raised"))
                done |= set(worker.task_ids(name, "retry"))
                if not set(received) <= done:
                    return None
                state.append(len(received))
        return tuple(state)

    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while True:
        state = finished()
        if state is None or state != last:
            last, since = state, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"workers still busy after {timeout} s: {[w.log_tail(10) for w in workers]}")
        time.sleep(0.05)


def _lock_waiters() -> list[tuple[int, str]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, query FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return cursor.fetchall()


def _backend_alive(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid])
        return cursor.fetchone() is not None


@contextmanager
def _broker_at(url: str) -> Iterator[None]:
    """Point this process's Celery app at another broker URL, with fresh connection pools.

    Celery reads CELERY_BROKER_URL from the environment before its config, so
    both are switched; the pools are dropped so the next publish connects anew.
    """
    saved_env = os.environ.get("CELERY_BROKER_URL")
    saved_conf = celery_app.conf.get("broker_url")

    def drop_pools(close: bool) -> None:
        for owner, attr in ((celery_app.amqp, "_producer_pool"), (celery_app, "_pool")):
            pool = getattr(owner, attr)
            if pool is not None and close:
                pool.force_close_all()
            setattr(owner, attr, None)

    drop_pools(close=False)  # the real broker's pools stay usable for later
    os.environ["CELERY_BROKER_URL"] = url
    celery_app.conf.broker_url = url
    try:
        yield
    finally:
        drop_pools(close=True)  # the dead broker's pools
        if saved_env is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = saved_env
        celery_app.conf.broker_url = saved_conf
        velro_tasks.enqueue_reset()


# --- 1. welcome email ------------------------------------------------------------------------


def test_signup_without_a_code_gets_exactly_one_welcome_email_from_the_worker(smtp_server, celery_worker):
    worker = celery_worker()
    latencies = []
    for n in range(5):
        address = f"newcomer{n}@example.com"
        started = time.perf_counter()
        body = _signup(address)
        messages = smtp_server.wait_for(n + 1, timeout=15)
        latencies.append(smtp_server.received_at[n] - started)
        message = messages[n]
        assert message["To"] == address
        assert message["Subject"] == WELCOME
        assert message["X-Velro-Event"] == f"welcome:{body['user']['id']}"
        parts = _parts(message)
        assert set(parts) >= {"text/plain", "text/html"}, parts.keys()
        assert address in parts["text/plain"]
        assert "<" in parts["text/html"]
        assert ReferralIntent.objects.filter(referred_id=body["user"]["id"]).count() == 0
    print(
        f"\nsignup -> welcome email received (s): {[round(s, 3) for s in latencies]}"
        f" p50={statistics.median(latencies):.3f} max={max(latencies):.3f}"
    )

    wait_until(
        lambda: EmailNotification.objects.filter(kind=EmailKind.WELCOME, status=EmailStatus.SENT).count() == 5,
        timeout=5,
        what="5 welcome notifications marked sent",
    )
    _settled(worker)
    assert Counter(m["To"] for m in smtp_server.snapshot()) == {f"newcomer{n}@example.com": 1 for n in range(5)}
    assert list(EmailNotification.objects.values_list("attempts", flat=True)) == [1] * 5
    assert not Referral.objects.exists()


# --- 2. a valid code -----------------------------------------------------------------------------


def test_signup_with_a_valid_code_credits_the_referrer_and_emails_both(smtp_server, celery_worker):
    worker = celery_worker()
    referrer = _signup("referrer@example.com")
    code = referrer["user"]["referral_code"]
    assert code and len(code) == 8 and code == code.upper()
    referrer_id = referrer["user"]["id"]

    friend = _signup("friend@example.com", code.lower())  # codes are case-insensitive
    friend_id = friend["user"]["id"]
    assert friend["user"]["referral_code"] not in (None, code)

    referral = wait_until(
        lambda: Referral.objects.filter(referred_id=friend_id, status=ReferralStatus.CREDITED).first(),
        timeout=15,
        what="the referral to be credited",
    )
    assert str(referral.referrer_id) == referrer_id
    assert referral.code == code.lower()
    assert referral.credited_at is not None
    assert _credited_count(referrer_id) == 1
    assert ReferralIntent.objects.get(referred_id=friend_id).status == IntentStatus.DONE

    me = APIClient()
    me.credentials(HTTP_AUTHORIZATION=f"Bearer {referrer['access_token']}")
    response = me.get(REFERRALS_ME)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["code"] == code
    assert body["counts"] == {"pending": 0, "credited": 1, "rejected": 0}
    assert [(row["id"], row["status"]) for row in body["results"]] == [(friend_id, "credited")]

    smtp_server.wait_for(3, timeout=15)  # welcome x2, "you referred" x1
    _settled(worker)
    to_referrer = smtp_server.to("referrer@example.com")
    referral_emails = [m for m in to_referrer if m["Subject"] != WELCOME]
    assert [m["Subject"] for m in referral_emails] == ["You referred friend to Velro"]
    assert referral_emails[0]["X-Velro-Event"] == f"referral_credited:{referral.pk}"
    assert set(_parts(referral_emails[0])) >= {"text/plain", "text/html"}
    assert [m["Subject"] for m in smtp_server.to("friend@example.com")] == [WELCOME]
    assert len(smtp_server.snapshot()) == 3
    assert EmailNotification.objects.filter(status=EmailStatus.SENT).count() == 3


# --- 3. invalid codes ---------------------------------------------------------------------------------


def test_unknown_malformed_and_own_codes_are_rejected_without_credit_or_email(smtp_server, celery_worker):
    worker = celery_worker()
    cases = {
        "unknown@example.com": (_unused_code(), RejectReason.UNKNOWN),
        "bang@example.com": ("!!", RejectReason.MALFORMED),
        "long@example.com": ("A" * 64, RejectReason.MALFORMED),
    }
    ids = {}
    for address, (code, _) in cases.items():
        ids[address] = _signup(address, code)["user"]["id"]  # never fails the signup
    # Longer than any code could be: dropped at the door, no intent at all.
    huge = _signup("huge@example.com", "B" * 200)["user"]["id"]

    # Own code: impossible at signup (no code yet), so record the intent the way signup does.
    selfish = UserFactory(email="selfish@example.com")
    intent = services.referral_intent_record(user=selfish, code=selfish.referral_code.code.lower())
    process_referral_intent.delay(intent.pk)  # what signup's receiver enqueues on commit
    cases["selfish@example.com"] = (selfish.referral_code.code.lower(), RejectReason.OWN)
    ids["selfish@example.com"] = str(selfish.pk)

    wait_until(
        lambda: Referral.objects.filter(status=ReferralStatus.REJECTED).count() == 4,
        timeout=15,
        what="4 rejected referrals",
    )
    for address, (code, reason) in cases.items():
        referral = Referral.objects.get(referred_id=ids[address])
        assert (referral.status, referral.reason, referral.referrer_id) == ("rejected", reason, None), address
        assert referral.code == code
    assert not ReferralIntent.objects.filter(referred_id=huge).exists()
    assert not Referral.objects.filter(referred_id=huge).exists()
    assert ReferralIntent.objects.filter(status=IntentStatus.DONE).count() == 4

    smtp_server.wait_for(4, timeout=15)  # the four API signups' welcome emails
    _settled(worker)
    assert not ReferralCode.objects.filter(credited_count__gt=0).exists()
    assert not EmailNotification.objects.filter(kind=EmailKind.REFERRAL_CREDITED).exists()
    assert sorted(m["To"] for m in smtp_server.snapshot()) == sorted(
        ["unknown@example.com", "bang@example.com", "long@example.com", "huge@example.com"]
    )
    assert {m["Subject"] for m in smtp_server.snapshot()} == {WELCOME}


# --- 4. duplicate deliveries ----------------------------------------------------------------------------


def test_duplicate_task_deliveries_change_nothing_and_send_nothing_twice(smtp_server, celery_worker):
    worker = celery_worker()
    referrer = UserFactory(email="dupe-referrer@example.com")
    friend_id = _signup("dupe-friend@example.com", referrer.referral_code.code)["user"]["id"]
    referral = wait_until(
        lambda: Referral.objects.filter(referred_id=friend_id, status=ReferralStatus.CREDITED).first(),
        timeout=15,
        what="the referral to be credited",
    )
    smtp_server.wait_for(2, timeout=15)  # friend's welcome + the referrer's email
    _settled(worker)
    intent = ReferralIntent.objects.get(referred_id=friend_id)
    notifications = list(EmailNotification.objects.values_list("pk", flat=True))
    assert len(notifications) == 2

    expected = {}
    for _ in range(2):
        expected[process_referral_intent.delay(intent.pk).id] = "'skipped'"
        for notification_id in notifications:
            expected[send_email.delay(notification_id).id] = "'skipped'"
            # A message queued under the task's old name before the move runs the same way.
            expected[celery_app.send_task("referrals.send_email", args=[notification_id]).id] = "'skipped'"
    wait_until(
        lambda: all(worker.result_of(task_id) is not None for task_id in expected),
        timeout=15,
        what="the duplicate tasks to be executed by the worker",
    )
    assert {task_id: worker.result_of(task_id) for task_id in expected} == expected
    _settled(worker)

    assert _credited_count(referrer.pk) == 1
    assert Referral.objects.count() == 1
    assert Referral.objects.get().status == ReferralStatus.CREDITED
    assert ReferralIntent.objects.get(pk=intent.pk).attempts == 1
    assert sorted(EmailNotification.objects.values_list("status", "attempts")) == [("sent", 1), ("sent", 1)]
    assert smtp_server.events() == {f"welcome:{friend_id}": 1, f"referral_credited:{referral.pk}": 1}


# --- 5. worker killed mid-task ------------------------------------------------------------------------------


def test_worker_killed_mid_task_the_referral_is_still_credited_exactly_once(smtp_server, celery_worker):
    # Let the credit step wait on the row lock instead of timing out at once.
    patient = {"DB_LOCK_TIMEOUT_MS": "60000", "DB_STATEMENT_TIMEOUT_MS": "60000"}
    first = celery_worker("w1", env=patient)
    referrer = UserFactory(email="killed-referrer@example.com")

    locker = second_connection(app_timeouts=False)
    try:
        with locker.cursor() as cursor:
            cursor.execute("SELECT code FROM referral_codes WHERE user_id = %s FOR UPDATE", [referrer.pk])
        friend_id = _signup("killed-friend@example.com", referrer.referral_code.code)["user"]["id"]
        [(blocked_pid, blocked_query)] = wait_until(
            _lock_waiters, timeout=10, what="the worker's credit UPDATE to wait on the locked row"
        )
        assert "referral_codes" in blocked_query
        [task_id] = first.task_ids("referrals.process_intent")
        first.kill()  # main process and pool child, SIGKILL: nothing is acknowledged
    finally:
        locker.rollback()
        locker.close()
    # The orphaned backend runs its UPDATE, finds its client gone, and rolls back.
    wait_until(lambda: not _backend_alive(blocked_pid), timeout=10, what="the killed worker's backend to end")
    assert _credited_count(referrer.pk) == 0
    assert Referral.objects.get(referred_id=friend_id).status == ReferralStatus.PENDING
    unacked = broker_unacked_delivered_at()
    assert unacked, "acks_late: the killed worker's message must still be unacknowledged in the broker"

    # The message becomes visible again once the visibility timeout has passed since
    # its delivery; a worker restores visible messages when it starts.
    visible_at = max(unacked.values()) + WORKER_VISIBILITY_TIMEOUT + 0.5
    wait_until(lambda: time.time() >= visible_at, timeout=WORKER_VISIBILITY_TIMEOUT + 5, what="visibility timeout")
    second = celery_worker("w2")

    # acks_late + reject_on_worker_lost: the redelivered message alone must
    # finish the job (no sweeper here); it resumes at the credit step.
    wait_until(
        lambda: second.result_of(task_id) is not None,
        timeout=WORKER_VISIBILITY_TIMEOUT + 15,
        what="the killed worker's message to be redelivered and run",
    )
    path = f"redelivery (acks_late): the second worker re-ran {task_id} -> {second.result_of(task_id)}"
    print(f"\nworker killed mid-task, recovered by: {path}")
    # The killed run had recorded the referral and was blocked at the credit:
    # the redelivered message resumes there.
    assert second.result_of(task_id) == "'resumed'", path

    assert task_id in second.task_ids("referrals.process_intent"), f"message not redelivered ({path})"
    wait_until(lambda: _credited_count(referrer.pk) == 1, timeout=10, what=f"credited_count == 1 ({path})")
    assert Referral.objects.get(referred_id=friend_id).status == ReferralStatus.CREDITED, path
    smtp_server.wait_for(2, timeout=15)  # the friend's welcome + the referrer's email
    _settled(second)
    assert _credited_count(referrer.pk) == 1, path
    assert [m["Subject"] for m in smtp_server.to("killed-referrer@example.com")] == [
        "You referred killed-friend to Velro"
    ], path
    assert [m["Subject"] for m in smtp_server.to("killed-friend@example.com")] == [WELCOME], path


# --- 6. broker down during signup ---------------------------------------------------------------------------


def test_broker_down_at_signup_loses_nothing_and_recovers_once_it_is_back(smtp_server, celery_worker):
    referrer = UserFactory(email="offline-referrer@example.com")
    failures_before = velro_tasks.stats["enqueue_failures"]
    with _broker_at("redis://127.0.0.1:1/0"):  # nothing listens there
        started = time.perf_counter()
        friend_id = _signup("offline-friend@example.com", referrer.referral_code.code)["user"]["id"]
        elapsed = time.perf_counter() - started
    print(f"\nsignup with the broker down: {elapsed:.3f} s")
    assert elapsed < 3.0
    assert velro_tasks.stats["enqueue_failures"] > failures_before

    intent = ReferralIntent.objects.get(referred_id=friend_id)
    assert (intent.status, intent.attempts) == (IntentStatus.PENDING, 0)
    assert list(EmailNotification.objects.values_list("event_key", "status")) == [(f"welcome:{friend_id}", "pending")]
    assert not Referral.objects.exists()

    worker = celery_worker("w1", env={"REFERRAL_SWEEP_MIN_AGE_SECONDS": "0"})
    result = sweep.delay()  # through the real broker, like beat does
    wait_until(lambda: _credited_count(referrer.pk) == 1, timeout=15, what="the referral credited by the sweep")
    outbox = emails_sweep.delay()  # the outbox's own sweep (beat too) sends the welcome email
    smtp_server.wait_for(2, timeout=15)
    _settled(worker)
    assert worker.result_of(result.id) is not None
    assert worker.result_of(outbox.id) is not None
    assert ReferralIntent.objects.get(pk=intent.pk).status == IntentStatus.DONE
    referral = Referral.objects.get(referred_id=friend_id)
    assert referral.status == ReferralStatus.CREDITED
    assert smtp_server.events() == {f"welcome:{friend_id}": 1, f"referral_credited:{referral.pk}": 1}
    assert [m["To"] for m in smtp_server.snapshot() if m["Subject"] == WELCOME] == ["offline-friend@example.com"]
    assert sorted(EmailNotification.objects.values_list("status", flat=True)) == ["sent", "sent"]


# --- 7. nightly sync ---------------------------------------------------------------------------------------------


def test_nightly_sync_fixes_drifted_counters_and_pending_intents(smtp_server, celery_worker):
    worker = celery_worker()
    referrer = UserFactory(email="sync-referrer@example.com")
    code = referrer.referral_code.code
    first_id = _signup("sync-first@example.com", code)["user"]["id"]
    wait_until(lambda: _credited_count(referrer.pk) == 1, timeout=15, what="the first referral credited")

    ReferralCode.objects.filter(user_id=referrer.pk).update(credited_count=7)  # drift
    late = UserFactory(email="sync-late@example.com")
    intent = ReferralIntent.objects.create(referred=late, code=code)  # pending, never enqueued

    result = nightly_sync.delay()
    wait_until(lambda: worker.result_of(result.id) is not None, timeout=20, what="nightly_sync to finish")
    report = ast.literal_eval(worker.result_of(result.id))
    assert report["intents_processed"] == 1
    assert report["referrals_credited"] == 1
    assert report["counters_fixed"] == 1
    assert not any(name.startswith("mirrors_") for name in report)  # referrals only: the mirror is accounts'
    assert _credited_count(referrer.pk) == 2
    assert ReferralIntent.objects.get(pk=intent.pk).status == IntentStatus.DONE
    assert Referral.objects.get(referred_id=late.pk).status == ReferralStatus.CREDITED

    smtp_server.wait_for(3, timeout=15)  # first's welcome + two "you referred"
    _settled(worker)
    referrals = Referral.objects.filter(referrer_id=referrer.pk)
    assert smtp_server.events() == {
        f"welcome:{first_id}": 1,
        **{f"referral_credited:{referral.pk}": 1 for referral in referrals},
    }

    # The management command: same reconcile, a printed summary; a second run fixes nothing.
    ReferralCode.objects.filter(user_id=referrer.pk).update(credited_count=0)
    out = StringIO()
    call_command("sync_referrals", stdout=out)
    summary = out.getvalue()
    assert "counters_fixed: 1" in summary, summary
    assert "intents_processed: 0" in summary, summary
    assert "counters_examined: 3" in summary, summary  # referrer, first, late
    assert "sync_referrals: done" in summary
    assert _credited_count(referrer.pk) == 2

    out = StringIO()
    call_command("sync_referrals", stdout=out)
    again = out.getvalue()
    for line in ("counters_fixed: 0", "intents_processed: 0", "referrals_credited: 0"):
        assert line in again, again
    _settled(worker)
    assert len(smtp_server.snapshot()) == 3


# --- 8. concurrency ---------------------------------------------------------------------------------------------


def test_two_workers_and_a_reconcile_racing_credit_each_referral_exactly_once(smtp_server, celery_worker):
    referrer = UserFactory(email="busy-referrer@example.com")
    code = referrer.referral_code.code
    friends = [UserFactory(email=f"busy-friend{n}@example.com") for n in range(20)]
    intents = [ReferralIntent.objects.create(referred=friend, code=code.lower()) for friend in friends]
    workers = [celery_worker(name, concurrency=2, wait=False) for name in ("w1", "w2")]
    for worker in workers:
        worker.wait_ready()

    for intent in intents:
        process_referral_intent.delay(intent.pk)
    report = services.referrals_reconcile()  # races the two workers for the same rows

    wait_until(lambda: _credited_count(referrer.pk) >= 20, timeout=20, what="20 credits")
    smtp_server.wait_for(20, timeout=20)
    _settled(*workers)

    by_workers = {w.name: _processed_by(w) for w in workers}
    print(
        f"\nrace: reconcile processed {report.intents_processed} intents (credited {report.referrals_credited});"
        f" workers processed {by_workers}; the other deliveries were skipped"
    )
    assert report.intents_processed + sum(by_workers.values()) == 20
    assert _credited_count(referrer.pk) == 20
    assert Referral.objects.filter(referrer_id=referrer.pk, status=ReferralStatus.CREDITED).count() == 20
    assert not ReferralIntent.objects.filter(status=IntentStatus.PENDING).exists()
    assert sorted(ReferralIntent.objects.values_list("attempts", flat=True)) == [1] * 20
    notifications = EmailNotification.objects.filter(kind=EmailKind.REFERRAL_CREDITED)
    assert notifications.count() == 20
    assert set(notifications.values_list("status", "attempts")) == {("sent", 1)}
    events = smtp_server.events()
    assert len(smtp_server.snapshot()) == 20
    assert set(events.values()) == {1}
    assert set(events) == {f"referral_credited:{pk}" for pk in Referral.objects.values_list("pk", flat=True)}
    assert {m["To"] for m in smtp_server.snapshot()} == {"busy-referrer@example.com"}


def _processed_by(worker: Worker) -> int:
    """How many intents this worker validated itself (not skipped, not a resumed credit)."""
    return sum(
        worker.result_of(task_id) in {"'credited'", "'rejected'", "'pending'"}
        for task_id in worker.task_ids("referrals.process_intent", "succeeded")
    )
