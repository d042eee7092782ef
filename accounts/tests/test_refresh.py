from __future__ import annotations

import hashlib
import threading
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import services
from accounts.models import RefreshToken, Session, User
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import token_claims
from velro.errors import InvalidRefreshToken

pytestmark = pytest.mark.django_db(transaction=False)

LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
ME = "/api/v1/auth/me"
INVALID = {"error": "invalid_refresh_token", "detail": "Invalid refresh token"}


def sha256_hex(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def claims_of(access_token: str) -> dict:
    return token_claims(access_token, audience=settings.JWT_AUDIENCE)


def refresh(client: APIClient, token: object):
    return client.post(REFRESH, {"refresh_token": token}, format="json")


def me_status(access_token: str) -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token}")
    return client.get(ME).status_code


def age_rotation(raw: str, seconds: float) -> None:
    """Move the rotation of `raw` into the past, as if it happened `seconds` ago."""
    updated = RefreshToken.objects.filter(token_hash=sha256_hex(raw)).update(
        rotated_at=timezone.now() - timedelta(seconds=seconds)
    )
    assert updated == 1


def login_body(client: APIClient, user: User) -> dict:
    response = client.post(LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


# --- rotation -------------------------------------------------------------------


def test_refresh_returns_a_full_token_body_with_a_new_refresh_token(api, user, login):
    first = login(user)
    response = refresh(api, first["refresh_token"])
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "expires_at", "refresh_token", "user"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    assert body["refresh_token"] != first["refresh_token"]
    assert len(body["refresh_token"]) >= 43
    assert body["user"]["id"] == str(user.pk)
    assert body["user"]["email"] == user.email
    claims = claims_of(body["access_token"])
    assert claims["exp"] == body["expires_at"]
    assert claims["sub"] == str(user.pk)


def test_refreshed_access_token_keeps_the_session_id(api, user, login):
    first = login(user)
    body = refresh(api, first["refresh_token"]).json()
    session = Session.objects.get(user=user)
    assert claims_of(first["access_token"])["sid"] == str(session.pk)
    assert claims_of(body["access_token"])["sid"] == str(session.pk)
    assert Session.objects.filter(user=user).count() == 1


def test_refreshed_access_token_authenticates(api, user, login):
    body = refresh(api, login(user)["refresh_token"]).json()
    assert me_status(body["access_token"]) == 200


def test_rotation_links_the_successor_to_its_parent_and_marks_the_parent(api, user, login):
    first = login(user)
    body = refresh(api, first["refresh_token"]).json()
    parent = RefreshToken.objects.get(token_hash=sha256_hex(first["refresh_token"]))
    child = RefreshToken.objects.get(token_hash=sha256_hex(body["refresh_token"]))
    assert parent.rotated_at is not None
    assert child.rotated_at is None
    assert child.parent_id == parent.pk
    assert child.session_id == parent.session_id


def test_successor_can_be_refreshed_again_and_the_chain_continues(api, user, login):
    tokens = [login(user)["refresh_token"]]
    for _ in range(3):
        response = refresh(api, tokens[-1])
        assert response.status_code == 200, response.content
        tokens.append(response.json()["refresh_token"])
    assert len(set(tokens)) == 4
    assert RefreshToken.objects.filter(session__user=user).count() == 4
    assert RefreshToken.objects.filter(session__user=user, rotated_at__isnull=True).count() == 1


def test_refresh_does_not_extend_the_sessions_absolute_expiry(api, user, login):
    first = login(user)
    expires_at = Session.objects.get(user=user).expires_at
    second = refresh(api, first["refresh_token"]).json()
    refresh(api, second["refresh_token"])
    assert Session.objects.get(user=user).expires_at == expires_at


@pytest.mark.postgresql
def test_raw_refresh_tokens_are_never_stored_only_their_sha256(api, user, login):
    first = login(user)
    second = refresh(api, first["refresh_token"]).json()
    raws = [first["refresh_token"], second["refresh_token"]]
    hashes = set(RefreshToken.objects.filter(session__user=user).values_list("token_hash", flat=True))
    assert hashes == {sha256_hex(raw) for raw in raws}
    assert all(len(h) == 64 and set(h) <= set("0123456789abcdef") for h in hashes)
    with connection.cursor() as cursor:
        cursor.execute("SELECT t::text FROM auth_refresh_tokens t")
        token_rows = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT s::text FROM auth_sessions s")
        session_rows = [row[0] for row in cursor.fetchall()]
    for raw in raws:
        assert not any(raw in row for row in token_rows + session_rows)


# --- reuse detection and the grace window ------------------------------------------------


def test_rotated_token_reused_after_the_grace_window_is_a_401(api, user, login):
    first = login(user)
    assert refresh(api, first["refresh_token"]).status_code == 200
    age_rotation(first["refresh_token"], settings.REFRESH_REUSE_GRACE_SECONDS + 1)
    response = refresh(api, first["refresh_token"])
    assert response.status_code == 401
    assert response.json() == INVALID


def test_reuse_after_the_grace_window_revokes_the_whole_family(api, user, login):
    first = login(user)
    second = refresh(api, first["refresh_token"]).json()
    # Both access tokens have been used (and may be cached) before the replay.
    assert me_status(first["access_token"]) == 200
    assert me_status(second["access_token"]) == 200
    age_rotation(first["refresh_token"], settings.REFRESH_REUSE_GRACE_SECONDS + 1)
    assert refresh(api, first["refresh_token"]).status_code == 401

    session = Session.objects.get(user=user)
    assert session.revoked_at is not None
    assert session.revoked_reason == "refresh_reuse"
    # The newest token of the family is dead too: the thief and the victim both lose it.
    newest = refresh(api, second["refresh_token"])
    assert newest.status_code == 401
    assert newest.json() == INVALID
    # And so are the session's access tokens, at once.
    assert me_status(second["access_token"]) == 401
    assert me_status(first["access_token"]) == 401


def test_reuse_revocation_leaves_other_sessions_of_the_user_alone(api, user, login):
    victim = login(user)
    other = login(user)
    assert me_status(other["access_token"]) == 200
    refresh(api, victim["refresh_token"])
    age_rotation(victim["refresh_token"], settings.REFRESH_REUSE_GRACE_SECONDS + 1)
    assert refresh(api, victim["refresh_token"]).status_code == 401
    assert me_status(other["access_token"]) == 200
    assert refresh(api, other["refresh_token"]).status_code == 200


def test_rotated_token_within_the_grace_window_gets_the_same_successor(api, user, login):
    first = login(user)
    second = refresh(api, first["refresh_token"]).json()
    rows_before = RefreshToken.objects.count()

    again = refresh(api, first["refresh_token"])
    assert again.status_code == 200, again.content
    body = again.json()
    assert body["refresh_token"] == second["refresh_token"]
    assert RefreshToken.objects.count() == rows_before
    assert claims_of(body["access_token"])["sid"] == claims_of(second["access_token"])["sid"]
    assert Session.objects.get(user=user).revoked_at is None
    assert me_status(body["access_token"]) == 200


def test_rotated_token_just_inside_the_grace_window_is_not_treated_as_reuse(api, user, login):
    first = login(user)
    second = refresh(api, first["refresh_token"]).json()
    age_rotation(first["refresh_token"], settings.REFRESH_REUSE_GRACE_SECONDS - 2)
    again = refresh(api, first["refresh_token"])
    assert again.status_code == 200
    assert again.json()["refresh_token"] == second["refresh_token"]
    assert Session.objects.get(user=user).revoked_at is None


def test_grace_window_boundary_through_the_service(user):
    t0 = timezone.now()
    started = services.session_start(user=user, ip=None, user_agent="", now=t0)
    rotated = services.session_refresh(refresh_token=started.refresh_token, now=t0)
    grace = timedelta(seconds=settings.REFRESH_REUSE_GRACE_SECONDS)

    at_edge = services.session_refresh(refresh_token=started.refresh_token, now=t0 + grace)
    assert at_edge.refresh_token == rotated.refresh_token
    assert at_edge.session_id == rotated.session_id
    assert Session.objects.get(pk=started.session_id).revoked_at is None

    with pytest.raises(InvalidRefreshToken):
        services.session_refresh(refresh_token=started.refresh_token, now=t0 + grace + timedelta(seconds=1))
    assert Session.objects.get(pk=started.session_id).revoked_reason == "refresh_reuse"
    with pytest.raises(InvalidRefreshToken):
        services.session_refresh(refresh_token=rotated.refresh_token, now=t0 + grace + timedelta(seconds=2))


# --- tokens that never work ------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "not-a-token",
        "A" * 43,
        "x",
        "../../etc/passwd",
        "' OR 1=1 --",
        "ünïcödé-tøken",
    ],
)
def test_unknown_or_garbage_refresh_token_is_a_401(api, user, login, token):
    login(user)
    response = refresh(api, token)
    assert response.status_code == 401
    assert response.json() == INVALID


def test_the_sha256_of_a_token_is_not_itself_a_token(api, user, login):
    first = login(user)
    response = refresh(api, sha256_hex(first["refresh_token"]))
    assert response.status_code == 401
    assert response.json() == INVALID


def test_an_access_token_is_not_a_refresh_token(api, user, login):
    first = login(user)
    response = refresh(api, first["access_token"][:512])
    assert response.status_code == 401
    assert response.json() == INVALID


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"token": "abc"},
        {"refresh_token": ""},
        {"refresh_token": None},
        {"refresh_token": 12345},
        {"refresh_token": True},
        {"refresh_token": ["abc"]},
        {"refresh_token": {"value": "abc"}},
        {"refresh_token": "a" * 513},
        {"refresh_token": "nul\x00byte"},
        ["abc"],
        "abc",
    ],
    ids=[
        "missing",
        "wrong-field",
        "empty",
        "null",
        "integer",
        "boolean",
        "list-value",
        "object-value",
        "too-long",
        "nul-byte",
        "list-body",
        "string-body",
    ],
)
def test_malformed_refresh_input_is_a_400(api, payload):
    response = api.post(REFRESH, payload, format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] == "validation_error"
    assert isinstance(body["fields"], dict)


def test_refresh_body_that_is_not_json_is_a_400(api):
    response = api.generic("POST", REFRESH, '{"refresh_token": ', content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"


# --- sessions that have ended ----------------------------------------------------------


def test_refresh_of_a_logged_out_session_is_a_401(api, user, login):
    first = login(user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {first['access_token']}")
    assert client.get(ME).status_code == 200
    assert client.post(LOGOUT, {}, format="json").status_code == 204
    response = refresh(api, first["refresh_token"])
    assert response.status_code == 401
    assert response.json() == INVALID
    assert RefreshToken.objects.filter(session__user=user).count() == 1


def test_refresh_of_an_expired_session_is_a_401(api, user, login):
    first = login(user)
    Session.objects.filter(user=user).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = refresh(api, first["refresh_token"])
    assert response.status_code == 401
    assert response.json() == INVALID
    assert RefreshToken.objects.filter(session__user=user).count() == 1


def test_refresh_for_an_inactive_user_is_a_401(api, user, login):
    first = login(user)
    User.objects.filter(pk=user.pk).update(is_active=False)
    response = refresh(api, first["refresh_token"])
    assert response.status_code == 401
    assert response.json() == INVALID
    assert RefreshToken.objects.filter(session__user=user).count() == 1


def test_refresh_of_a_deleted_users_token_is_a_401(api, user, login):
    first = login(user)
    User.objects.filter(pk=user.pk).delete()
    response = refresh(api, first["refresh_token"])
    assert response.status_code == 401
    assert response.json() == INVALID


def test_refresh_of_an_operator_revoked_session_is_a_401(api, user, login):
    first = login(user)
    session = Session.objects.get(user=user)
    assert services.session_revoke(session_ids=[session.pk], reason="admin") == 1
    assert refresh(api, first["refresh_token"]).status_code == 401


# --- budget ---------------------------------------------------------------------------


def _statements(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]


@pytest.mark.postgresql
def test_refresh_runs_at_most_three_sql_statements(api, user, login):
    first = login(user)
    with CaptureQueriesContext(connection) as queries:
        response = refresh(api, first["refresh_token"])
    assert response.status_code == 200
    statements = _statements(queries)
    assert len(statements) <= 3, statements
    assert any("FOR UPDATE" in sql for sql in statements), statements


def test_grace_window_replay_runs_at_most_three_sql_statements(api, user, login):
    first = login(user)
    refresh(api, first["refresh_token"])
    with CaptureQueriesContext(connection) as queries:
        response = refresh(api, first["refresh_token"])
    assert response.status_code == 200
    assert len(_statements(queries)) <= 3, _statements(queries)


# --- the concurrent-refresh race (real transactions, real row locks) --------------------------


def _race(raw: str, before_post: threading.Barrier) -> tuple[list, list, list]:
    results: list = [None, None]
    errors: list = []

    def worker(index: int) -> None:
        try:
            client = APIClient()
            before_post.wait(timeout=10)
            response = client.post(REFRESH, {"refresh_token": raw}, format="json")
            results[index] = (response.status_code, response.json())
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    return results, errors, threads


def _assert_one_successor_and_identical_answers(raw: str, results: list, errors: list) -> None:
    assert errors == []
    assert [status for status, _ in results] == [200, 200], results
    first, second = (body for _, body in results)
    assert first["refresh_token"] == second["refresh_token"]
    assert first["refresh_token"] != raw
    parent = RefreshToken.objects.get(token_hash=sha256_hex(raw))
    assert parent.rotated_at is not None
    successors = RefreshToken.objects.filter(parent=parent)
    assert successors.count() == 1
    assert successors.get().token_hash == sha256_hex(first["refresh_token"])
    assert RefreshToken.objects.filter(session=parent.session).count() == 2
    assert Session.objects.get(pk=parent.session_id).revoked_at is None
    assert claims_of(first["access_token"])["sid"] == claims_of(second["access_token"])["sid"]


@pytest.mark.postgresql  # the row lock: SQLite's in-memory test database refuses, it does not wait
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_refreshes_of_one_token_get_the_same_single_successor():
    user = UserFactory()
    raw = login_body(APIClient(), user)["refresh_token"]
    results, errors, threads = _race(raw, threading.Barrier(2))
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    _assert_one_successor_and_identical_answers(raw, results, errors)


def _lock_waiters() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_refreshes_queued_on_the_row_lock_are_serialised_into_one_successor(settings):
    """Both requests are provably waiting on the token's row lock at the same time."""
    # Room for two threads to reach the lock on a busy CI box before the
    # lock budget would cut them (the budget itself is tested elsewhere).
    settings.AUTH_LOCK_TIMEOUT_MS = 5000
    user = UserFactory()
    raw = login_body(APIClient(), user)["refresh_token"]
    seen_waiting = 0
    with transaction.atomic():
        # Hold the row lock so both requests queue up behind it; release it
        # well inside the lock timeout the refresh runs under.
        lock_timeout_ms = getattr(settings, "AUTH_LOCK_TIMEOUT_MS", settings.DB_LOCK_TIMEOUT_MS)
        RefreshToken.objects.select_for_update().get(token_hash=sha256_hex(raw))
        results, errors, threads = _race(raw, threading.Barrier(2))
        deadline = time.monotonic() + min(2.0, lock_timeout_ms / 2000)
        while time.monotonic() < deadline:
            seen_waiting = _lock_waiters()
            if seen_waiting >= 2:
                break
            time.sleep(0.01)
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert seen_waiting >= 2, "both refreshes should have been blocked on the row lock"
    _assert_one_successor_and_identical_answers(raw, results, errors)
