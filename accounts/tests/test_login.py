from __future__ import annotations

import importlib
from io import StringIO

import pytest
from django.apps import apps as django_apps
from django.contrib.auth.hashers import make_password
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts import touch
from accounts.hashers import Argon2idPasswordHasher
from accounts.models import RefreshToken, Session, User
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import signing_keys_warm

pytestmark = pytest.mark.django_db(transaction=False)

LOGIN = "/api/v1/auth/login"
INVALID = {"error": "invalid_credentials", "detail": "Invalid login credentials"}


def test_login_returns_token_body(api, user):
    response = api.post(LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    assert isinstance(body["expires_at"], int)
    assert len(body["refresh_token"]) >= 43  # 256 bits, base64url
    assert set(body["user"]) >= {"id", "email", "username", "role", "display_name", "created_at"}
    assert body["user"]["id"] == str(user.pk)
    assert body["user"]["role"] == "viewer"


def test_login_email_is_case_insensitive(api):
    user = UserFactory(email="Alice@X.io")
    response = api.post(LOGIN, {"email": "aLiCe@x.IO", "password": DEFAULT_PASSWORD}, format="json")
    assert response.status_code == 200
    assert response.json()["user"]["id"] == str(user.pk)


def test_login_by_username(api):
    user = UserFactory(username="Bob_1")
    response = api.post(LOGIN, {"username": "bob_1", "password": DEFAULT_PASSWORD}, format="json")
    assert response.status_code == 200
    assert response.json()["user"]["id"] == str(user.pk)


@pytest.mark.parametrize(
    "payload",
    [
        {"email": "user-wrong@example.com", "password": "wrong password"},
        {"email": "nobody@example.com", "password": DEFAULT_PASSWORD},
        {"email": "inactive@example.com", "password": DEFAULT_PASSWORD},
        {"username": "nobody", "password": DEFAULT_PASSWORD},
    ],
    ids=["wrong-password", "unknown-email", "inactive-user", "unknown-username"],
)
def test_login_failures_share_one_generic_401(api, payload):
    UserFactory(email="user-wrong@example.com")
    UserFactory(email="inactive@example.com", is_active=False)
    response = api.post(LOGIN, payload, format="json")
    assert response.status_code == 401
    assert response.json() == INVALID


def test_unknown_user_login_still_verifies_an_argon2id_hash(api, monkeypatch):
    calls: list[str] = []
    original = Argon2idPasswordHasher.verify

    def spy(self, password, encoded):
        calls.append(encoded)
        return original(self, password, encoded)

    monkeypatch.setattr(Argon2idPasswordHasher, "verify", spy)
    response = api.post(LOGIN, {"email": "ghost@example.com", "password": "whatever it is"}, format="json")
    assert response.status_code == 401
    assert len(calls) == 1
    assert calls[0].startswith("argon2$argon2id$v=19$m=19456,t=2,p=1$")


def test_wrong_password_verifies_exactly_one_hash_like_unknown_user(api, user, monkeypatch):
    calls: list[str] = []
    original = Argon2idPasswordHasher.verify
    monkeypatch.setattr(Argon2idPasswordHasher, "verify", lambda self, p, e: calls.append(e) or original(self, p, e))
    api.post(LOGIN, {"email": user.email, "password": "not it at all"}, format="json")
    api.post(LOGIN, {"email": "ghost@example.com", "password": "not it at all"}, format="json")
    assert len(calls) == 2


@pytest.mark.postgresql
def test_login_runs_at_most_two_queries_and_no_transaction_while_hashing(api, user, monkeypatch):
    depth_while_hashing: list[int] = []
    original = Argon2idPasswordHasher.verify

    def spy(self, password, encoded):
        depth_while_hashing.append(len(connection.atomic_blocks))
        return original(self, password, encoded)

    monkeypatch.setattr(Argon2idPasswordHasher, "verify", spy)
    # The test itself runs inside a transaction, so compare against the
    # atomic depth the test started with: the login must not add one.
    outer = len(connection.atomic_blocks)
    signing_keys_warm()  # a node's key set, reloaded once per JWT_SIGNING_KEYS_CACHE_SECONDS, not per login
    with CaptureQueriesContext(connection) as queries:
        response = api.post(LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json")
    assert response.status_code == 200
    statements = [q["sql"] for q in queries.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]
    assert len(statements) <= 2, statements
    assert depth_while_hashing == [outer]


def test_login_writes_last_login_off_the_request_path(api, user):
    before = User.objects.get(pk=user.pk).last_login
    with CaptureQueriesContext(connection) as queries:
        api.post(LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json")
    assert not any("last_login" in q["sql"] and q["sql"].startswith("UPDATE") for q in queries.captured_queries)
    assert ("user.last_login", user.pk) in touch.pending()
    assert touch.flush() >= 1
    after = User.objects.get(pk=user.pk).last_login
    assert after is not None and after != before


def test_login_creates_a_session_with_one_hashed_refresh_token(api, user):
    body = api.post(LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json").json()
    session = Session.objects.get(user=user)
    token = RefreshToken.objects.get(session=session)
    assert token.token_hash != body["refresh_token"]
    assert len(token.token_hash) == 64
    assert session.user_agent == ""


@pytest.mark.parametrize(
    "legacy_hasher",
    ["pbkdf2_sha256", "bcrypt"],
)
def test_legacy_hash_verifies_and_is_upgraded_to_argon2id(api, legacy_hasher):
    user = UserFactory()
    User.objects.filter(pk=user.pk).update(password=make_password(DEFAULT_PASSWORD, hasher=legacy_hasher))
    response = api.post(LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json")
    assert response.status_code == 200
    assert User.objects.get(pk=user.pk).password.startswith("argon2$argon2id$v=19$m=19456,t=2,p=1$")


def test_supabase_bcrypt_hash_verifies_and_is_upgraded(api):
    import bcrypt

    user = UserFactory()
    supabase_hash = bcrypt.hashpw(DEFAULT_PASSWORD.encode(), bcrypt.gensalt(10, prefix=b"2a")).decode()
    assert supabase_hash.startswith("$2a$10$")
    User.objects.filter(pk=user.pk).update(password=f"bcrypt${supabase_hash}")
    response = api.post(LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json")
    assert response.status_code == 200
    assert User.objects.get(pk=user.pk).password.startswith("argon2$argon2id$")


def test_wrong_password_does_not_upgrade_a_legacy_hash(api):
    user = UserFactory()
    legacy = make_password(DEFAULT_PASSWORD, hasher="pbkdf2_sha256")
    User.objects.filter(pk=user.pk).update(password=legacy)
    assert api.post(LOGIN, {"email": user.email, "password": "nope nope"}, format="json").status_code == 401
    assert User.objects.get(pk=user.pk).password == legacy


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"password": "x"},
        {"email": "a@b.co"},
        {"email": "a@b.co", "username": "abc", "password": "x"},
        {"email": "not-an-email", "password": "x"},
        {"email": ["a@b.co"], "password": "x"},
        {"email": "a@b.co", "password": {"x": 1}},
        {"email": "a@b.co", "password": "x" * 2000},
        {"email": "a@b.co", "password": "nul\x00byte"},
    ],
)
def test_malformed_login_input_is_a_400_with_fields(api, payload):
    response = api.post(LOGIN, payload, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "validation_error"
    assert isinstance(body["fields"], dict)


def test_login_body_that_is_not_json_is_a_400(api):
    response = api.generic("POST", LOGIN, "{nope", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"


# --- addresses never confirmed ---------------------------------------------------------------------------


def test_an_address_never_confirmed_gets_email_not_confirmed_after_the_right_password_only(api):
    user = UserFactory(email_confirmed_at=None)
    wrong = api.post("/api/v1/auth/login", {"email": user.email, "password": "not the password"}, format="json")
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_credentials"  # tells nothing
    right = api.post("/api/v1/auth/login", {"email": user.email, "password": DEFAULT_PASSWORD}, format="json")
    assert right.status_code == 400 and right.json()["error"] == "email_not_confirmed"
    assert not Session.objects.filter(user=user).exists()


def test_users_made_by_an_operator_are_confirmed_and_sign_in(api, monkeypatch):
    User.objects.create_user("shell@example.com", DEFAULT_PASSWORD)
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", DEFAULT_PASSWORD)
    call_command("createsuperuser", "--noinput", "--email", "root@example.com", stdout=StringIO())
    for email in ("shell@example.com", "root@example.com"):
        assert User.objects.get(email=email).email_confirmed_at is not None
        response = api.post("/api/v1/auth/login", {"email": email, "password": DEFAULT_PASSWORD}, format="json")
        assert response.status_code == 200, response.content


def test_the_upgrade_confirms_operator_users_and_keeps_imported_unconfirmed_ones_unconfirmed():
    backfill = importlib.import_module("accounts.migrations.0008_confirm_operator_users").confirm_operator_users
    operator = UserFactory(email_confirmed_at=None, app_metadata={})
    imported = UserFactory(email_confirmed_at=None, app_metadata={"provider": "email", "providers": ["email"]})
    confirmed = UserFactory()
    before = confirmed.email_confirmed_at
    backfill(django_apps, None)
    operator.refresh_from_db(), imported.refresh_from_db(), confirmed.refresh_from_db()
    assert operator.email_confirmed_at == operator.date_joined
    assert imported.email_confirmed_at is None  # as unconfirmed as it was on Supabase
    assert confirmed.email_confirmed_at == before
