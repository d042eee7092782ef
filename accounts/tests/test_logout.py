from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts.models import Session, User
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import bearer

pytestmark = pytest.mark.django_db(transaction=False)

LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
PASSWORD = "/api/v1/auth/password"
ME = "/api/v1/auth/me"

NEW_PASSWORD = "a brand new passphrase 42"


def me_status(tokens: dict) -> int:
    return bearer(tokens["access_token"]).get(ME).status_code


def refresh_status(tokens: dict) -> int:
    return APIClient().post(REFRESH, {"refresh_token": tokens["refresh_token"]}, format="json").status_code


def alive(tokens: dict) -> bool:
    """Both halves of a session still work (access on /me, refresh on /refresh)."""
    return me_status(tokens) == 200 and refresh_status(tokens) == 200


def dead(tokens: dict) -> bool:
    """Both halves of a session are rejected with 401."""
    return me_status(tokens) == 401 and refresh_status(tokens) == 401


def login_status(email: str, password: str) -> int:
    return APIClient().post(LOGIN, {"email": email, "password": password}, format="json").status_code


def logout(tokens: dict, payload: object = None):
    return bearer(tokens["access_token"]).post(LOGOUT, {} if payload is None else payload, format="json")


@pytest.fixture
def sessions(user, login):
    """Three logins of `user`, each used once so any cache is warm."""
    logged_in = [login(user) for _ in range(3)]
    for tokens in logged_in:
        assert me_status(tokens) == 200
    return logged_in


@pytest.fixture
def bystander(db, login):
    """Another user with a live session."""
    tokens = login(UserFactory())
    assert me_status(tokens) == 200
    return tokens


# --- logout ----------------------------------------------------------------------


def test_logout_without_a_scope_is_local_and_answers_204_with_no_body(sessions):
    response = logout(sessions[0])
    assert response.status_code == 204
    assert response.content == b""
    revoked = Session.objects.exclude(revoked_at=None)
    assert list(revoked.values_list("revoked_reason", flat=True)) == ["logout_local"]


@pytest.mark.parametrize("scope", ["local", "global", "others"])
def test_logout_scopes_answer_204(sessions, scope):
    assert logout(sessions[0], {"scope": scope}).status_code == 204


def test_local_logout_rejects_the_access_token_at_once(sessions):
    assert logout(sessions[0]).status_code == 204
    response = bearer(sessions[0]["access_token"]).get(ME)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"


def test_local_logout_kills_the_sessions_refresh_token(sessions):
    assert logout(sessions[0], {"scope": "local"}).status_code == 204
    response = APIClient().post(REFRESH, {"refresh_token": sessions[0]["refresh_token"]}, format="json")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_refresh_token"


def test_local_logout_leaves_the_users_other_sessions_alive(sessions):
    assert logout(sessions[0], {"scope": "local"}).status_code == 204
    assert dead(sessions[0])
    assert alive(sessions[1])
    assert alive(sessions[2])


def test_logged_out_token_cannot_log_out_again(sessions):
    assert logout(sessions[0]).status_code == 204
    response = logout(sessions[0])
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"


def test_global_logout_ends_every_session_of_the_user(user, sessions):
    assert logout(sessions[0], {"scope": "global"}).status_code == 204
    for tokens in sessions:
        assert dead(tokens)
    assert not Session.objects.filter(user=user, revoked_at=None).exists()
    assert set(Session.objects.filter(user=user).values_list("revoked_reason", flat=True)) == {"logout_global"}


def test_global_logout_from_any_session_ends_all_of_them(sessions):
    assert logout(sessions[2], {"scope": "global"}).status_code == 204
    assert all(dead(tokens) for tokens in sessions)


def test_others_logout_keeps_the_current_session_and_ends_the_rest(sessions):
    assert logout(sessions[1], {"scope": "others"}).status_code == 204
    assert alive(sessions[1])
    assert dead(sessions[0])
    assert dead(sessions[2])


def test_others_logout_with_a_single_session_ends_nothing(user, login):
    tokens = login(user)
    assert logout(tokens, {"scope": "others"}).status_code == 204
    assert alive(tokens)


@pytest.mark.parametrize("scope", ["local", "global", "others"])
def test_logout_never_touches_another_users_sessions(sessions, bystander, scope):
    assert logout(sessions[0], {"scope": scope}).status_code == 204
    assert alive(bystander)


@pytest.mark.parametrize(
    "payload",
    [
        {"scope": "everything"},
        {"scope": "GLOBAL"},
        {"scope": ""},
        {"scope": None},
        {"scope": ["global"]},
        {"scope": 1},
    ],
    ids=["unknown", "wrong-case", "empty", "null", "list", "number"],
)
def test_invalid_logout_scope_is_a_400_and_logs_nobody_out(sessions, payload):
    response = logout(sessions[0], payload)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "validation_error"
    assert "scope" in body["fields"]
    assert all(alive(tokens) for tokens in sessions)


def test_logout_without_a_token_is_a_401_not_authenticated(api, sessions):
    response = api.post(LOGOUT, {"scope": "global"}, format="json")
    assert response.status_code == 401
    assert response.json()["error"] == "not_authenticated"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert all(alive(tokens) for tokens in sessions)


def test_logout_with_a_garbage_token_is_a_401_invalid_token(sessions):
    response = bearer("not.a.jwt").post(LOGOUT, {"scope": "global"}, format="json")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    assert all(alive(tokens) for tokens in sessions)


# --- password change --------------------------------------------------------------


def change_password(tokens: dict, current: str, new: str):
    return bearer(tokens["access_token"]).post(
        PASSWORD, {"current_password": current, "new_password": new}, format="json"
    )


def test_password_change_answers_204_with_no_body(sessions):
    response = change_password(sessions[0], DEFAULT_PASSWORD, NEW_PASSWORD)
    assert response.status_code == 204
    assert response.content == b""


def test_password_change_ends_every_other_session(sessions):
    assert change_password(sessions[0], DEFAULT_PASSWORD, NEW_PASSWORD).status_code == 204
    assert dead(sessions[1])
    assert dead(sessions[2])


def test_password_change_keeps_the_current_session_working(sessions):
    assert change_password(sessions[0], DEFAULT_PASSWORD, NEW_PASSWORD).status_code == 204
    assert me_status(sessions[0]) == 200
    assert refresh_status(sessions[0]) == 200


def test_password_change_leaves_other_users_alone(sessions, bystander):
    assert change_password(sessions[0], DEFAULT_PASSWORD, NEW_PASSWORD).status_code == 204
    assert alive(bystander)


def test_after_a_password_change_the_new_password_logs_in_and_the_old_one_does_not(user, sessions):
    assert change_password(sessions[0], DEFAULT_PASSWORD, NEW_PASSWORD).status_code == 204
    assert login_status(user.email, NEW_PASSWORD) == 200
    response = APIClient().post(LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_credentials"


def test_password_change_stores_an_argon2id_hash_not_the_password(user, sessions):
    assert change_password(sessions[0], DEFAULT_PASSWORD, NEW_PASSWORD).status_code == 204
    stored = User.objects.get(pk=user.pk).password
    assert NEW_PASSWORD not in stored
    assert stored.startswith("argon2$argon2id$")


def test_wrong_current_password_is_a_400_and_changes_nothing(user, sessions):
    response = change_password(sessions[0], "not my password", NEW_PASSWORD)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "validation_error"
    assert "current_password" in body["fields"]
    assert "new_password" not in body["fields"]
    assert all(alive(tokens) for tokens in sessions)
    assert login_status(user.email, DEFAULT_PASSWORD) == 200
    assert login_status(user.email, NEW_PASSWORD) == 401


@pytest.mark.parametrize(
    "new_password",
    [
        "password123",
        "qwertyuiop",
        "12345678901234",
        "Sh0rt!x",
        "",
        "x" * 129,
    ],
    ids=["common", "common-keyboard", "numeric", "too-short", "empty", "too-long"],
)
def test_weak_or_invalid_new_password_is_a_400_on_new_password(user, sessions, new_password):
    response = change_password(sessions[0], DEFAULT_PASSWORD, new_password)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "validation_error"
    assert "new_password" in body["fields"]
    assert all(alive(tokens) for tokens in sessions)
    assert login_status(user.email, DEFAULT_PASSWORD) == 200


def test_new_password_too_similar_to_the_email_is_a_400(db, login):
    user = UserFactory(email="marguerite.lindqvist@example.com")
    tokens = login(user)
    response = change_password(tokens, DEFAULT_PASSWORD, "marguerite.lindqvist")
    assert response.status_code == 400
    assert "new_password" in response.json()["fields"]


def test_a_64_character_password_is_accepted_and_logs_in(user, sessions):
    long_password = ("correct-horse-battery-staple-" * 3)[:64]
    assert len(long_password) == 64
    assert change_password(sessions[0], DEFAULT_PASSWORD, long_password).status_code == 204
    assert login_status(user.email, long_password) == 200
    assert login_status(user.email, long_password[:63]) == 401


def test_new_password_is_taken_as_typed_without_trimming(user, sessions):
    padded = "  spaced out passphrase  "
    assert change_password(sessions[0], DEFAULT_PASSWORD, padded).status_code == 204
    assert login_status(user.email, padded) == 200
    assert login_status(user.email, padded.strip()) == 401


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"current_password": DEFAULT_PASSWORD},
        {"new_password": NEW_PASSWORD},
        {"current_password": [DEFAULT_PASSWORD], "new_password": NEW_PASSWORD},
        {"current_password": DEFAULT_PASSWORD, "new_password": {"x": 1}},
    ],
    ids=["empty", "no-new", "no-current", "list-current", "object-new"],
)
def test_malformed_password_change_input_is_a_400(user, sessions, payload):
    response = bearer(sessions[0]["access_token"]).post(PASSWORD, payload, format="json")
    assert response.status_code == 400
    assert response.json()["error"] == "validation_error"
    assert login_status(user.email, DEFAULT_PASSWORD) == 200


def test_password_change_without_a_token_is_a_401(api, user):
    response = api.post(PASSWORD, {"current_password": DEFAULT_PASSWORD, "new_password": NEW_PASSWORD}, format="json")
    assert response.status_code == 401
    assert response.json()["error"] == "not_authenticated"
    assert login_status(user.email, DEFAULT_PASSWORD) == 200


def test_password_change_from_a_logged_out_session_is_a_401(user, sessions):
    assert logout(sessions[0]).status_code == 204
    response = change_password(sessions[0], DEFAULT_PASSWORD, NEW_PASSWORD)
    assert response.status_code == 401
    assert login_status(user.email, DEFAULT_PASSWORD) == 200
