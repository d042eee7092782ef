from __future__ import annotations

import time

import pytest
from django.conf import settings
from django.db import connection

from accounts.hashers import Argon2idPasswordHasher
from accounts.models import ApiKey, PublicUser, RefreshToken, Session, User
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tokens import refresh_token_hash

pytestmark = pytest.mark.django_db(transaction=False)

SIGNUP = "/api/v1/auth/signup"
LOGIN = "/api/v1/auth/login"
ME = "/api/v1/auth/me"
REFRESH = "/api/v1/auth/refresh"
ARGON2ID_OWASP = "argon2$argon2id$v=19$m=19456,t=2,p=1$"
STRONG = "violet tractor umbrella 42"


def _counts() -> tuple[int, ...]:
    return (
        User.objects.count(),
        PublicUser.objects.count(),
        Session.objects.count(),
        RefreshToken.objects.count(),
        ApiKey.objects.count(),
    )


def _assert_clean_error(response, status: int) -> dict:
    """A JSON error body of the one shape, with the expected status."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict)
    assert isinstance(body.get("error"), str) and body["error"]
    assert isinstance(body.get("detail"), str) and body["detail"]
    return body


def _assert_validation_error(response, field: str) -> dict:
    body = _assert_clean_error(response, 400)
    assert body["error"] == "validation_error"
    assert field in body["fields"], body
    assert all(isinstance(message, str) for message in body["fields"][field])
    return body


@pytest.fixture
def signup(api):
    def _signup(**payload):
        payload.setdefault("password", STRONG)
        return api.post(SIGNUP, payload, format="json")

    return _signup


# --- the happy path ------------------------------------------------------------


def test_signup_returns_201_with_the_token_body(signup):
    before = int(time.time())
    response = signup(email="new.user@example.com", username="new_user")
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) >= {"access_token", "token_type", "expires_in", "expires_at", "refresh_token", "user"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.ACCESS_TOKEN_TTL_SECONDS
    assert isinstance(body["expires_at"], int)
    assert before + body["expires_in"] <= body["expires_at"] <= int(time.time()) + body["expires_in"]
    assert len(body["refresh_token"]) >= 43  # 256 bits, base64url
    assert body["access_token"].count(".") == 2  # a JWT
    user = User.objects.get(email="new.user@example.com")
    assert body["user"] == {
        "id": str(user.pk),
        "email": "new.user@example.com",
        "username": "new_user",
        "role": "viewer",
        "display_name": "",
        "created_at": body["user"]["created_at"],
        "referral_code": user.referral_code.code,
    }
    assert body["user"]["created_at"].startswith(user.date_joined.strftime("%Y-%m-%dT%H:%M:%S"))


def test_signup_without_username_stores_null(signup):
    response = signup(email="nameless@example.com")
    assert response.status_code == 201, response.content
    assert response.json()["user"]["username"] is None
    assert User.objects.get(email="nameless@example.com").username is None
    assert PublicUser.objects.get(user__email="nameless@example.com").username is None


@pytest.mark.parametrize("username", ["", None])
def test_signup_with_a_blank_or_null_username_stores_null(signup, username):
    response = signup(email="blank@example.com", username=username)
    assert response.status_code == 201, response.content
    assert User.objects.get(email="blank@example.com").username is None


def test_two_users_may_both_sign_up_without_a_username(signup):
    assert signup(email="first@example.com").status_code == 201
    assert signup(email="second@example.com", username="").status_code == 201
    assert User.objects.filter(username__isnull=True).count() == 2


def test_signup_access_token_works_on_me(api, signup):
    body = signup(email="me@example.com").json()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {body['access_token']}")
    response = api.get(ME)
    assert response.status_code == 200, response.content
    assert response.json() == body["user"]


def test_signup_refresh_token_works_on_refresh(api, signup):
    body = signup(email="refresh@example.com").json()
    response = api.post(REFRESH, {"refresh_token": body["refresh_token"]}, format="json")
    assert response.status_code == 200, response.content
    refreshed = response.json()
    assert refreshed["user"]["id"] == body["user"]["id"]
    assert refreshed["refresh_token"] != body["refresh_token"]


def test_signed_up_user_can_log_in_with_the_same_password(api, signup):
    signup(email="Returning@Example.com")
    response = api.post(LOGIN, {"email": "returning@example.com", "password": STRONG}, format="json")
    assert response.status_code == 200, response.content


def test_signup_creates_user_mirror_and_session(api):
    response = api.post(
        SIGNUP,
        {"email": "Mirror@Example.COM", "password": STRONG, "username": "Mirror_Me"},
        format="json",
        HTTP_USER_AGENT="pytest-agent/1.0",
    )
    assert response.status_code == 201, response.content
    body = response.json()

    user = User.objects.get(pk=body["user"]["id"])
    assert user.email == "Mirror@example.com"  # domain lower-cased, local part kept
    assert user.username == "Mirror_Me"
    assert user.is_active and not user.is_staff and not user.is_superuser

    mirror = PublicUser.objects.get(pk=user.pk)
    assert mirror.role == "viewer"
    assert (mirror.email, mirror.username, mirror.display_name) == (user.email, user.username, user.display_name)
    assert mirror.created_at == user.date_joined

    session = Session.objects.get(user=user)
    assert session.revoked_at is None
    assert session.is_active()
    assert session.user_agent == "pytest-agent/1.0"
    assert session.ip == "127.0.0.1"
    token = RefreshToken.objects.get(session=session)
    assert token.token_hash == refresh_token_hash(body["refresh_token"])
    assert token.token_hash != body["refresh_token"]
    assert token.rotated_at is None


def test_signup_stores_an_owasp_argon2id_hash(signup):
    signup(email="hash@example.com")
    stored = User.objects.get(email="hash@example.com").password
    assert stored.startswith(ARGON2ID_OWASP), stored
    assert STRONG not in stored


def test_signup_password_is_taken_as_typed_without_trimming(api, signup):
    padded = "  spaced out passphrase  "
    assert signup(email="spaces@example.com", password=padded).status_code == 201
    user = User.objects.get(email="spaces@example.com")
    assert user.check_password(padded)
    assert not user.check_password(padded.strip())


def test_no_transaction_is_open_while_the_signup_password_is_hashed(signup, monkeypatch):
    depth_while_hashing: list[int] = []
    original = Argon2idPasswordHasher.encode

    def spy(self, password, salt):
        depth_while_hashing.append(len(connection.atomic_blocks))
        return original(self, password, salt)

    monkeypatch.setattr(Argon2idPasswordHasher, "encode", spy)
    # The test runs inside a transaction: the signup must not add a level
    # around the hash.
    outer = len(connection.atomic_blocks)
    response = signup(email="depth@example.com")
    assert response.status_code == 201, response.content
    assert depth_while_hashing == [outer]


# --- conflicts ----------------------------------------------------------------------


def test_duplicate_email_is_a_409_email_taken_and_creates_nothing(signup):
    assert signup(email="taken@example.com").status_code == 201
    before = _counts()
    response = signup(email="taken@example.com", password="another fine passphrase")
    body = _assert_clean_error(response, 409)
    assert body["error"] == "email_taken"
    assert _counts() == before


def test_duplicate_email_in_another_case_is_email_taken(signup):
    assert signup(email="Alice@X.io").status_code == 201
    before = _counts()
    response = signup(email="alice@x.io")
    body = _assert_clean_error(response, 409)
    assert body["error"] == "email_taken"
    assert _counts() == before
    assert User.objects.filter(email__iexact="alice@x.io").count() == 1


def test_duplicate_email_with_surrounding_whitespace_is_email_taken(signup):
    assert signup(email="trim@example.com").status_code == 201
    before = _counts()
    response = signup(email="  TRIM@example.com ")
    assert response.status_code == 409, response.content
    assert response.json()["error"] == "email_taken"
    assert _counts() == before


def test_duplicate_email_of_a_factory_user_is_email_taken(signup):
    UserFactory(email="factory@example.com")
    before = _counts()
    response = signup(email="FACTORY@EXAMPLE.COM")
    assert response.status_code == 409, response.content
    assert response.json()["error"] == "email_taken"
    assert _counts() == before


def test_email_containing_the_word_username_is_still_email_taken(signup):
    assert signup(email="username@x.io").status_code == 201
    before = _counts()
    response = signup(email="username@x.io")
    body = _assert_clean_error(response, 409)
    assert body["error"] == "email_taken"
    assert _counts() == before


def test_duplicate_username_in_another_case_is_a_409_username_taken(signup):
    assert signup(email="bob@example.com", username="Bob_1").status_code == 201
    before = _counts()
    response = signup(email="other-bob@example.com", username="bOB_1")
    body = _assert_clean_error(response, 409)
    assert body["error"] == "username_taken"
    assert _counts() == before
    assert not User.objects.filter(email="other-bob@example.com").exists()


def test_username_taken_by_a_factory_user_is_username_taken(signup):
    UserFactory(username="carol")
    before = _counts()
    response = signup(email="carol2@example.com", username="CAROL")
    assert response.status_code == 409, response.content
    assert response.json()["error"] == "username_taken"
    assert _counts() == before


def test_a_failed_signup_leaves_the_email_free_for_a_retry(signup):
    UserFactory(username="dave")
    assert signup(email="dave@example.com", username="dave").status_code == 409
    response = signup(email="dave@example.com", username="dave_2")
    assert response.status_code == 201, response.content


# --- password rules --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("email", "password"),
    [
        ("short@example.com", "Ab3$xyz"),  # 7 characters
        ("common@example.com", "password123"),
        ("numeric@example.com", "8273649182736450"),
        ("marmaduke.fairweather@example.com", "fairweather1"),  # too similar to the email
        ("similar@example.com", "similar@example.com"),
    ],
    ids=["too-short", "common", "all-numeric", "similar-to-email-part", "same-as-email"],
)
def test_weak_password_is_a_400_on_the_password_field(signup, email, password):
    before = _counts()
    response = signup(email=email, password=password)
    _assert_validation_error(response, "password")
    assert _counts() == before


def test_password_too_similar_to_the_username_is_rejected(signup):
    response = signup(email="x1@example.com", username="quentin_blake", password="quentin_blake!")
    _assert_validation_error(response, "password")


def test_weak_password_is_rejected_before_any_hashing(signup, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(Argon2idPasswordHasher, "encode", lambda self, p, s: calls.append(p) or "")
    response = signup(email="weak@example.com", password="password123")
    assert response.status_code == 400
    assert calls == []


@pytest.mark.parametrize("length", [8, 64, 128])
def test_password_of_an_allowed_length_is_accepted(api, signup, length):
    password = ("Velro-long-pass-" * 9)[:length]
    assert len(password) == length
    response = signup(email=f"len{length}@example.com", password=password)
    assert response.status_code == 201, response.content
    login = api.post(LOGIN, {"email": f"len{length}@example.com", "password": password}, format="json")
    assert login.status_code == 200


@pytest.mark.parametrize("length", [129, 1000, 100_000])
def test_password_longer_than_128_characters_is_a_400(signup, length):
    before = _counts()
    response = signup(email="long@example.com", password=("Velro-long-pass-" * (length // 16 + 1))[:length])
    _assert_validation_error(response, "password")
    assert _counts() == before


# --- malformed input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "email",
    ["not-an-email", "a@", "@example.com", "", "   ", "two@@example.com", "a" * 250 + "@x.io", "nul\x00@example.com"],
    ids=["no-at", "no-domain", "no-local", "empty", "blank", "double-at", "too-long", "nul-byte"],
)
def test_invalid_email_is_a_400_on_the_email_field(signup, email):
    before = _counts()
    _assert_validation_error(signup(email=email), "email")
    assert _counts() == before


@pytest.mark.parametrize(
    "username",
    ["has space", "ab", "a" * 31, "émile", "semi;colon", "new\nline", "slash/y"],
    ids=["space", "too-short", "too-long", "non-ascii", "semicolon", "newline", "slash"],
)
def test_invalid_username_is_a_400_on_the_username_field(signup, username):
    before = _counts()
    _assert_validation_error(signup(email="u@example.com", username=username), "username")
    assert _counts() == before


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"email": ["a@example.com"], "password": STRONG}, "email"),
        ({"email": {"a": 1}, "password": STRONG}, "email"),
        ({"email": 12345, "password": STRONG}, "email"),
        ({"email": None, "password": STRONG}, "email"),
        ({"email": "a@example.com", "password": {"x": 1}}, "password"),
        ({"email": "a@example.com", "password": ["violet", "tractor"]}, "password"),
        ({"email": "a@example.com", "password": True}, "password"),
        ({"email": "a@example.com", "password": None}, "password"),
        ({"email": "a@example.com", "password": "nul\x00 byte in here"}, "password"),
        ({"email": "a@example.com", "password": STRONG, "username": ["bob"]}, "username"),
        ({"email": "a@example.com", "password": STRONG, "username": {"n": "bob"}}, "username"),
        ({"password": STRONG}, "email"),
        ({"email": "a@example.com"}, "password"),
    ],
    ids=[
        "email-list",
        "email-object",
        "email-number",
        "email-null",
        "password-object",
        "password-list",
        "password-bool",
        "password-null",
        "password-nul-byte",
        "username-list",
        "username-object",
        "missing-email",
        "missing-password",
    ],
)
def test_wrong_types_and_missing_fields_are_a_400_with_fields(api, payload, field):
    before = _counts()
    response = api.post(SIGNUP, payload, format="json")
    _assert_validation_error(response, field)
    assert _counts() == before


@pytest.mark.parametrize(
    "raw",
    ['[{"email": "a@example.com", "password": "violet tractor umbrella 42"}]', "[]", '"a string"', "42", "null", "{}"],
    ids=["list", "empty-list", "string", "number", "null", "empty-object"],
)
def test_json_body_that_is_not_a_signup_object_is_a_400(api, raw):
    before = _counts()
    response = api.generic("POST", SIGNUP, raw, content_type="application/json")
    body = _assert_clean_error(response, 400)
    assert body["error"] == "validation_error"
    assert isinstance(body["fields"], dict) and body["fields"]
    assert _counts() == before


def test_empty_body_is_a_400_naming_the_required_fields(api):
    response = api.generic("POST", SIGNUP, "", content_type="application/json")
    body = _assert_clean_error(response, 400)
    assert body["error"] == "validation_error"
    assert {"email", "password"} <= set(body["fields"])


@pytest.mark.parametrize("raw", ["{nope", '{"email": "a@example.com",', "\xff\xfe", '{"email": NaN}'])
def test_body_that_is_not_json_is_a_400_invalid_json(api, raw):
    response = api.generic("POST", SIGNUP, raw.encode("latin-1"), content_type="application/json")
    body = _assert_clean_error(response, 400)
    assert body["error"] == "invalid_json"


def test_form_encoded_body_is_a_415(api):
    before = _counts()
    response = api.post(
        SIGNUP,
        "email=form%40example.com&password=violet+tractor+umbrella+42",
        content_type="application/x-www-form-urlencoded",
    )
    body = _assert_clean_error(response, 415)
    assert body["error"] == "unsupported_media_type"
    assert _counts() == before


def test_multipart_body_is_a_415(api):
    response = api.post(SIGNUP, {"email": "multi@example.com", "password": STRONG}, format="multipart")
    body = _assert_clean_error(response, 415)
    assert body["error"] == "unsupported_media_type"
    assert not User.objects.filter(email="multi@example.com").exists()


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_signup_with_the_wrong_method_is_a_405(api, method):
    response = getattr(api, method)(SIGNUP)
    body = _assert_clean_error(response, 405)
    assert body["error"] == "method_not_allowed"


# --- referral codes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "referral_code",
    ["NOSUCHCODE", "", None, "   ", "!!!'; DROP TABLE users; --", "ü🙂\u200b", "x" * 64, "null"],
    ids=["unknown", "empty", "null", "blank", "sql-ish", "unicode", "64-chars", "the-word-null"],
)
def test_garbage_referral_code_never_fails_the_signup(signup, referral_code):
    response = signup(email="referred@example.com", referral_code=referral_code)
    assert response.status_code == 201, response.content
    assert User.objects.filter(email="referred@example.com").exists()


@pytest.mark.parametrize(
    "referral_code",
    ["x" * 65, "y" * 5000, 12345, ["CODE"], {"code": "CODE"}, True],
    ids=["65-chars", "5000-chars", "number", "list", "object", "bool"],
)
def test_referral_code_of_a_wrong_type_or_size_never_fails_the_signup(signup, referral_code):
    # The referral is a side-channel: whatever a client sends there, the
    # account is still created (DESIGN: referral work never blocks signup).
    response = signup(email="referred2@example.com", referral_code=referral_code)
    assert response.status_code == 201, response.content
    assert User.objects.filter(email="referred2@example.com").exists()


def test_referral_code_does_not_hide_a_real_validation_error(signup):
    response = signup(email="not-an-email", referral_code="NOSUCHCODE")
    _assert_validation_error(response, "email")


def test_default_factory_password_is_accepted_by_signup(signup):
    # The factories' password must satisfy the signup rules the API enforces.
    assert signup(email="factory-pass@example.com", password=DEFAULT_PASSWORD).status_code == 201
