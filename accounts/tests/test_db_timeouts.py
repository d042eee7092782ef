"""A slow, locked or absent PostgreSQL answers 503 + Retry-After, never a hang or a 500.

Real PostgreSQL throughout: the stalls are real (pg_sleep in a trigger, a row
lock held by a second connection) and the outage is a real refused connection
in a separate interpreter.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from django.conf import settings
from django.db import OperationalError, connection
from rest_framework.test import APIClient

from accounts.models import RefreshToken, Session, User
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tokens import refresh_token_hash
from velro.db import db_budget
from velro.tests.support import second_connection, stalled_inserts

LOGIN = "/api/v1/auth/login"
SIGNUP = "/api/v1/auth/signup"
REFRESH = "/api/v1/auth/refresh"
STRONG = "violet tractor umbrella 42"
TIMEOUT_SETTINGS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
UNITS_MS = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


# --- helpers ---------------------------------------------------------------------------------


def to_ms(shown: str) -> float:
    """`SHOW statement_timeout` output ('3s', '300ms', '1min', '0') in milliseconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", shown.strip())
    assert match, f"unexpected SHOW output {shown!r}"
    number, unit = match.groups()
    return float(number) * UNITS_MS[unit or "ms"]


def show_ms(name: str, conn=None) -> float:
    if conn is None:
        with connection.cursor() as cursor:
            cursor.execute(f"SHOW {name}")
            return to_ms(cursor.fetchone()[0])
    return to_ms(conn.execute(f"SHOW {name}").fetchone()[0])


def expected_ms() -> dict[str, int]:
    return {
        "statement_timeout": settings.DB_STATEMENT_TIMEOUT_MS,
        "lock_timeout": settings.DB_LOCK_TIMEOUT_MS,
        "idle_in_transaction_session_timeout": settings.DB_IDLE_IN_TRANSACTION_TIMEOUT_MS,
    }


def plain_connection() -> psycopg.Connection:
    """A plain psycopg connection to the test database (not Django's, no timeouts of ours)."""
    return second_connection(app_timeouts=False, connect_timeout=5)


def assert_unavailable(response) -> None:
    assert response.status_code == 503, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == "unavailable"
    assert isinstance(body.get("detail"), str) and body["detail"]
    assert response.has_header("Retry-After")
    assert int(response["Retry-After"]) >= 1


def timed(fn, *args, **kwargs):
    started = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - started


# --- connection-level timeouts -----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_every_connection_carries_the_configured_timeouts():
    connection.close()  # the next query opens a brand-new connection
    assert {name: show_ms(name) for name in TIMEOUT_SETTINGS} == expected_ms()

    seen: dict[str, float] = {}
    errors: list[BaseException] = []

    def other_thread() -> None:  # Django gives each thread its own connection
        try:
            seen.update({name: show_ms(name) for name in TIMEOUT_SETTINGS})
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(timeout=30)
    assert errors == []
    assert seen == expected_ms()


# --- db_budget: SET LOCAL --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_db_budget_cuts_a_slow_statement_with_query_canceled():
    started = time.monotonic()
    with pytest.raises(OperationalError) as info, db_budget(statement_ms=200), connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(2)")
    elapsed = time.monotonic() - started
    cause = info.value.__cause__
    assert isinstance(cause, psycopg.errors.QueryCanceled)
    assert cause.sqlstate == "57014"
    assert elapsed < 1.5  # cut at ~200 ms, not after the 2 s sleep
    # SET LOCAL: the rolled-back transaction took the budget with it.
    assert show_ms("statement_timeout") == settings.DB_STATEMENT_TIMEOUT_MS


@pytest.mark.django_db(transaction=True)
def test_db_budget_applies_inside_and_ends_with_the_transaction():
    with db_budget(statement_ms=200, lock_ms=150):
        assert show_ms("statement_timeout") == 200
        assert show_ms("lock_timeout") == 150
    assert show_ms("statement_timeout") == settings.DB_STATEMENT_TIMEOUT_MS
    assert show_ms("lock_timeout") == settings.DB_LOCK_TIMEOUT_MS


@pytest.mark.django_db(transaction=True)
def test_db_budget_defaults_to_the_auth_settings(settings):
    settings.AUTH_STATEMENT_TIMEOUT_MS = 1234
    settings.AUTH_LOCK_TIMEOUT_MS = 321
    with db_budget():
        assert show_ms("statement_timeout") == 1234
        assert show_ms("lock_timeout") == 321
    assert show_ms("statement_timeout") == settings.DB_STATEMENT_TIMEOUT_MS


@pytest.mark.django_db(transaction=True)
def test_db_budget_lock_wait_gives_up_with_lock_not_available():
    user = UserFactory()
    other = plain_connection()
    try:
        other.execute("SELECT id FROM auth_users WHERE id = %s FOR UPDATE", [user.pk])
        started = time.monotonic()
        with pytest.raises(OperationalError) as info, db_budget(lock_ms=200):
            list(User.objects.select_for_update().filter(pk=user.pk))
        elapsed = time.monotonic() - started
    finally:
        other.rollback()
        other.close()
    assert isinstance(info.value.__cause__, psycopg.errors.LockNotAvailable)
    assert info.value.__cause__.sqlstate == "55P03"
    assert elapsed < 1.5


# --- statement stalls at the API ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_login_whose_session_insert_stalls_answers_503_at_the_statement_timeout(monkeypatch):
    # The view must stay on the connection the timeout is set on below (a
    # login hands its pooled connection back while it hashes).
    monkeypatch.setattr("accounts.services.db_release", lambda: None)
    user = UserFactory()
    api = APIClient()
    with stalled_inserts("auth_sessions"):
        with connection.cursor() as cursor:
            # The test client runs the view on this same connection; the
            # configured (connect-time) timeout would also cut it, only slower.
            cursor.execute("SET statement_timeout = '300ms'")
        try:
            response, elapsed = timed(
                api.post, LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json"
            )
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET statement_timeout")
    assert_unavailable(response)
    assert elapsed < 3.0  # the trigger sleeps 5 s
    assert not Session.objects.filter(user=user).exists()
    assert show_ms("statement_timeout") == settings.DB_STATEMENT_TIMEOUT_MS


@pytest.mark.django_db(transaction=True)
def test_login_without_the_stall_still_works_on_the_same_connection(monkeypatch):
    """The 503 path leaves nothing behind: the next login on the connection succeeds."""
    monkeypatch.setattr("accounts.services.db_release", lambda: None)  # one connection, as above
    user = UserFactory()
    api = APIClient()
    with stalled_inserts("auth_sessions"):
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = '300ms'")
        try:
            assert_unavailable(api.post(LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json"))
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET statement_timeout")
    response = api.post(LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json")
    assert response.status_code == 200, response.content
    assert Session.objects.filter(user=user).count() == 1


@pytest.mark.django_db(transaction=True)
def test_signup_whose_transaction_stalls_answers_503_within_the_auth_budget(settings):
    settings.AUTH_STATEMENT_TIMEOUT_MS = 300
    api = APIClient()
    with stalled_inserts("auth_sessions"):
        response, elapsed = timed(api.post, SIGNUP, {"email": "stall@example.com", "password": STRONG}, format="json")
    assert_unavailable(response)
    # Cut by the 300 ms budget, not by the connection-level statement_timeout.
    assert elapsed < settings.DB_STATEMENT_TIMEOUT_MS / 1000
    # One transaction: the user inserted before the stalled session insert is gone too.
    assert not User.objects.filter(email="stall@example.com").exists()
    assert show_ms("statement_timeout") == settings.DB_STATEMENT_TIMEOUT_MS


# --- lock waits at the API -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_refresh_blocked_by_a_held_row_lock_answers_503_then_succeeds_once_released(settings):
    settings.AUTH_LOCK_TIMEOUT_MS = 300
    user = UserFactory()
    api = APIClient()
    raw = api.post(LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json").json()["refresh_token"]
    other = plain_connection()
    try:
        locked = other.execute(
            "SELECT id FROM auth_refresh_tokens WHERE token_hash = %s FOR UPDATE", [refresh_token_hash(raw)]
        ).fetchall()
        assert len(locked) == 1
        response, elapsed = timed(api.post, REFRESH, {"refresh_token": raw}, format="json")
        assert_unavailable(response)
        # The budget's 300 ms lock_timeout cut it, not the connection's own.
        assert elapsed < settings.DB_LOCK_TIMEOUT_MS / 1000
        other.commit()
    finally:
        other.close()
    assert RefreshToken.objects.get(token_hash=refresh_token_hash(raw)).rotated_at is None
    response = api.post(REFRESH, {"refresh_token": raw}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["refresh_token"] != raw
    assert RefreshToken.objects.get(token_hash=refresh_token_hash(raw)).rotated_at is not None


# --- database down ------------------------------------------------------------------------------------------

DOWN_SCRIPT = r"""
import json, time, uuid

import django

django.setup()

from django.test import Client
from django.utils import timezone

from accounts.tests.support import sign_token
from accounts.tokens import jwt_key

# A legacy HS256 token (no kid): checking it needs no key from the database, so
# what /me meets is the session lookup. (Signing with the active key would need
# the database too: it is down.)
now = int(timezone.now().timestamp())
claims = {"iss": "velro", "aud": "velro-api", "sub": str(uuid.uuid4()), "sid": str(uuid.uuid4()), "typ": "access"}
access = sign_token({**claims, "iat": now, "nbf": now, "exp": now + 300}, hs256_key=jwt_key())
calls = [
    ("login", "post", "/api/v1/auth/login", {"email": "a@example.com", "password": "whatever it is"}, {}),
    ("signup", "post", "/api/v1/auth/signup", {"email": "new@example.com", "password": "violet tractor 42"}, {}),
    ("refresh", "post", "/api/v1/auth/refresh", {"refresh_token": "r" * 43}, {}),
    ("me", "get", "/api/v1/auth/me", None, {"HTTP_AUTHORIZATION": "Bearer " + access}),
    ("me_api_key", "get", "/api/v1/auth/me", None, {"HTTP_X_API_KEY": "vk_live_" + "k" * 43}),
    ("admin", "get", "/admin/", None, {}),
    ("health", "get", "/health", None, {}),
]
client = Client()  # raise_request_exception=True: a 500 would raise, reported below
client.cookies["sessionid"] = "s" * 32  # so the admin has a session to look up
out = {}
for name, method, path, body, headers in calls:
    started = time.monotonic()
    try:
        if method == "post":
            response = client.post(path, data=json.dumps(body), content_type="application/json", **headers)
        else:
            response = client.get(path, **headers)
        try:
            payload = json.loads(response.content)
        except ValueError:
            payload = response.content.decode(errors="replace")[:300]
        retry_after = response.headers.get("Retry-After")
        out[name] = {"status": response.status_code, "body": payload, "retry_after": retry_after}
    except Exception as exc:
        out[name] = {"status": "raised", "error": repr(exc)[:500]}
    out[name]["seconds"] = round(time.monotonic() - started, 3)
print(json.dumps(out))
"""


def test_with_the_database_down_auth_endpoints_and_admin_answer_503_fast_and_health_200():
    env = dict(os.environ)
    env.pop("DJANGO_ENV_FILE", None)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "velro.settings",
            "DATABASE_URL": "postgres://root@127.0.0.1:1/nope",  # nothing listens on port 1
            "DJANGO_ALLOWED_HOSTS": "testserver",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
            "DJANGO_DEBUG": "false",
            "REDIS_URL": "",  # in-process cache: this test is about the database alone
            "CELERY_BROKER_URL": "redis://127.0.0.1:1/0",
            "PYTHONPATH": str(settings.BASE_DIR),
            "ACCESS_LOG": "false",  # stdout carries the script's result alone
        }
    )
    proc = subprocess.run(
        [sys.executable, "-c", DOWN_SCRIPT],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])

    for name in ("login", "signup", "refresh", "me", "me_api_key", "admin"):
        result = results[name]
        assert result["status"] == 503, (name, result)
        assert result["body"]["error"] == "unavailable", (name, result)
        assert result["retry_after"] is not None and int(result["retry_after"]) >= 1, (name, result)
        assert result["seconds"] < settings.DB_CONNECT_TIMEOUT, (name, result)  # refused, not waited on
    assert not any(result["status"] in (500, "raised") for result in results.values()), results
    assert results["health"]["status"] == 200, results["health"]
