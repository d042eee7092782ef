"""Recovery codes, the services and flows: single use, replaced sets, exhaustion,
and exactly one winner when two uses of one code race."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections, transaction
from django.test import RequestFactory

from accounts import recovery, recovery_flows
from accounts.models import RecoveryCode, Session
from accounts.tests.factories import UserFactory
from accounts.tests.support import api_login, session_of
from notifications.tests.support import wait_until


@pytest.fixture
def codes(user):
    return recovery.recovery_codes_generate(user_id=user.pk)


def test_a_set_has_ten_distinct_codes_stored_only_as_hmacs(user, codes):
    assert len(set(codes)) == recovery.CODE_COUNT == 10
    stored = set(RecoveryCode.objects.filter(user=user).values_list("code_hash", flat=True))
    assert stored == {recovery.recovery_code_hash(code) for code in codes}
    assert not stored & set(codes)


def test_a_code_spends_once(user, codes):
    assert recovery.recovery_code_use(user_id=user.pk, code=codes[0]) is True
    assert recovery.recovery_code_use(user_id=user.pk, code=codes[0]) is False
    assert recovery.recovery_codes_remaining(user_id=user.pk) == 9


def test_a_code_is_read_without_case_spaces_or_hyphens(user, codes):
    typed = " " + codes[1].upper().replace("-", " ") + " "
    assert recovery.recovery_code_use(user_id=user.pk, code=typed) is True


def test_a_malformed_or_unknown_code_spends_nothing(user, codes):
    for code in ("", "   ", "-----", "!!!", "aaaaa-aaaaa", "x" * 64):
        assert recovery.recovery_code_use(user_id=user.pk, code=code) is False
    assert recovery.recovery_codes_remaining(user_id=user.pk) == 10


def test_another_users_code_does_not_work(user, codes):
    other = UserFactory()
    recovery.recovery_codes_generate(user_id=other.pk)
    assert recovery.recovery_code_use(user_id=other.pk, code=codes[0]) is False


def test_a_regenerated_set_replaces_the_old_one(user, codes):
    fresh = recovery.recovery_codes_generate(user_id=user.pk)
    assert recovery.recovery_code_use(user_id=user.pk, code=codes[0]) is False
    assert recovery.recovery_code_use(user_id=user.pk, code=fresh[0]) is True


def test_ensure_makes_the_first_set_only(user):
    first = recovery.recovery_codes_ensure(user_id=user.pk)
    assert len(first) == 10
    assert recovery.recovery_codes_ensure(user_id=user.pk) == []


def test_after_the_tenth_code_none_works_and_none_remain(user, codes):
    for code in codes:
        assert recovery.recovery_code_use(user_id=user.pk, code=code) is True
    assert all(not recovery.recovery_code_use(user_id=user.pk, code=code) for code in codes)
    summary = recovery.recovery_codes_summary(user_id=user.pk)
    assert summary.remaining == 0 and summary.created_at is not None


def test_the_summary_counts_unused_codes_and_dates_the_set_in_one_query(user, codes, django_assert_num_queries):
    recovery.recovery_code_use(user_id=user.pk, code=codes[0])
    with django_assert_num_queries(1):
        summary = recovery.recovery_codes_summary(user_id=user.pk)
    assert summary.remaining == 9
    assert summary.created_at == RecoveryCode.objects.filter(user=user).first().created_at


def test_a_user_without_codes_has_none_remaining(user):
    assert recovery.recovery_codes_summary(user_id=user.pk) == recovery.RecoveryCodesSummary(0, None)


# --- the race: two uses of one code, one winner --------------------------------------------


def _lock_waiters(database: str) -> int:
    """Backends of this test database waiting for a row lock."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'", [database]
        )
        return cursor.fetchone()[0]


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_uses_of_one_code_spend_it_exactly_once():
    """Forced interleaving: the first use has spent the code in its open
    transaction when the second one runs its UPDATE; the second waits for the
    row lock (seen in pg_stat_activity), then finds the code spent."""
    user = UserFactory()
    code = recovery.recovery_codes_generate(user_id=user.pk)[0]
    spent_uncommitted, release = threading.Event(), threading.Event()
    results: dict[str, bool] = {}

    def first() -> None:
        try:
            with transaction.atomic():
                results["first"] = recovery.recovery_code_use(user_id=user.pk, code=code)
                spent_uncommitted.set()
                release.wait(10)
        finally:
            connections.close_all()

    def second() -> None:
        try:
            spent_uncommitted.wait(10)
            results["second"] = recovery.recovery_code_use(user_id=user.pk, code=code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    database = connection.settings_dict["NAME"]
    wait_until(lambda: _lock_waiters(database) >= 1, timeout=10, what="the second use waiting on the row lock")
    release.set()
    for thread in threads:
        thread.join(10)
    assert results == {"first": True, "second": False}
    assert recovery.recovery_codes_remaining(user_id=user.pk) == 9


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_two_sessions_racing_one_code_through_the_flow_raise_exactly_one(settings):
    """Both sign-ins at aal1 start together (a barrier) and send the same code:
    one session reaches aal2, the other gets mfa_verification_failed."""
    settings.RATELIMIT_ENABLE = False
    user = UserFactory()
    code = recovery.recovery_codes_generate(user_id=user.pk)[0]
    sessions = [session_of(api_login(user.email)["access_token"]) for _ in range(2)]
    barrier = threading.Barrier(2, timeout=10)
    outcomes: dict[int, str] = {}

    def verify(index: int) -> None:
        request = RequestFactory().post("/api/v1/auth/mfa/recovery-codes/verify")
        try:
            barrier.wait()
            recovery_flows.recovery_code_verify(request=request, user=user, session_id=sessions[index], code=code)
            outcomes[index] = "aal2"
        except recovery_flows.RecoveryCodeInvalid:
            outcomes[index] = "refused"
        finally:
            connections.close_all()

    threads = [threading.Thread(target=verify, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert sorted(outcomes.values()) == ["aal2", "refused"]
    levels = {sid: Session.objects.get(pk=sid).aal for sid in sessions}
    assert sorted(levels.values()) == ["aal1", "aal2"]
    assert recovery.recovery_codes_remaining(user_id=user.pk) == 9


def test_a_code_is_not_spent_on_a_session_that_has_ended(user, codes, settings):
    from accounts import mfa, services

    settings.RATELIMIT_ENABLE = False
    session_id = session_of(api_login(user.email)["access_token"])
    services.session_revoke(session_ids=[session_id], reason="test")
    request = RequestFactory().post("/")
    with pytest.raises(mfa.SessionNotFound):
        recovery_flows.recovery_code_verify(request=request, user=user, session_id=session_id, code=codes[0])
    assert recovery.recovery_codes_remaining(user_id=user.pk) == 10
