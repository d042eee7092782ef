"""API keys: shown once, stored as a keyed hash, usable for reads, never for session work."""

from __future__ import annotations

import hashlib
import hmac
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from accounts import touch
from accounts.models import ApiKey, User
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tokens import derived_key

pytestmark = pytest.mark.django_db(transaction=False)

SIGNUP = "/api/v1/auth/signup"
LOGIN = "/api/v1/auth/login"
LOGOUT = "/api/v1/auth/logout"
ME = "/api/v1/auth/me"
PASSWORD = "/api/v1/auth/password"
API_KEYS = "/api/v1/auth/api-keys"
ADMIN_API_KEYS = "/admin/accounts/apikey/"
STRONG = "violet tractor umbrella 42"
LISTED_FIELDS = {"id", "name", "prefix", "is_primary", "created_at", "last_used_at"}


def key_url(key_id: object) -> str:
    return f"{API_KEYS}/{key_id}"


def expected_hmac(raw: str) -> str:
    return hmac.new(derived_key("api-key"), raw.encode(), hashlib.sha256).hexdigest()


def with_key(raw: str, *, header: str = "x-api-key") -> APIClient:
    client = APIClient()
    if header == "x-api-key":
        client.credentials(HTTP_X_API_KEY=raw)
    else:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def create_key(client: APIClient, name: str = "ci") -> dict:
    response = client.post(API_KEYS, {"name": name}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def session_client(user: User) -> APIClient:
    client = APIClient()
    body = client.post(LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json").json()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {body['access_token']}")
    return client


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.content
    assert response.json()["error"] == code


# --- creation and listing ----------------------------------------------------------------------


def test_signup_returns_the_primary_key_once(api):
    response = api.post(SIGNUP, {"email": "keys@example.com", "password": STRONG}, format="json")
    assert response.status_code == 201, response.content
    key = response.json()["api_key"]
    assert key["name"] == "primary"
    assert key["is_primary"] is True
    assert key["prefix"].startswith("vk_live_")
    assert key["key"].startswith(key["prefix"])
    uuid.UUID(key["id"])
    stored = ApiKey.objects.get(pk=key["id"])
    assert stored.user.email == "keys@example.com"
    assert stored.key_hash == expected_hmac(key["key"])

    api.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['access_token']}")
    listed = api.get(API_KEYS).json()["results"]
    assert [item["id"] for item in listed] == [key["id"]]
    assert "key" not in listed[0]
    assert key["key"] not in api.get(API_KEYS).content.decode()


def test_list_shows_keys_without_the_secret_or_its_hash(auth_api, user):
    created = create_key(auth_api, "ci")
    response = auth_api.get(API_KEYS)
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 1
    assert set(results[0]) == LISTED_FIELDS
    assert results[0]["prefix"] == created["prefix"]
    text = response.content.decode()
    assert created["key"] not in text
    assert ApiKey.objects.get(pk=created["id"]).key_hash not in text


def test_list_shows_only_the_callers_own_active_keys(auth_api, user):
    mine = create_key(auth_api, "mine")
    revoked = create_key(auth_api, "revoked")
    assert auth_api.delete(key_url(revoked["id"])).status_code == 204
    other_key = create_key(session_client(UserFactory()), "theirs")
    ids = [item["id"] for item in auth_api.get(API_KEYS).json()["results"]]
    assert ids == [mine["id"]]
    assert other_key["id"] not in ids


def test_created_key_is_shown_once_and_stored_as_an_hmac(auth_api, user):
    body = create_key(auth_api, "deploy bot")
    assert set(body) == LISTED_FIELDS | {"key"}
    assert body["name"] == "deploy bot"
    assert body["is_primary"] is False
    assert body["last_used_at"] is None
    raw = body["key"]
    assert raw.startswith("vk_live_")
    assert len(raw) >= 40
    stored = ApiKey.objects.get(pk=body["id"])
    assert stored.user_id == user.pk
    assert stored.key_hash == expected_hmac(raw)
    assert stored.key_hash != hashlib.sha256(raw.encode()).hexdigest()
    assert stored.key_hash != raw
    assert stored.prefix == raw[:16] == body["prefix"]
    assert raw not in {stored.name, stored.prefix, stored.key_hash}


def test_two_keys_are_different(auth_api):
    first, second = create_key(auth_api, "a"), create_key(auth_api, "b")
    assert first["key"] != second["key"]
    assert first["id"] != second["id"]


@pytest.mark.parametrize(
    "payload",
    [
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 65},
        {"name": None},
        {"name": 123},
        {"name": True},
        {"name": ["ci"]},
        {"name": {"n": "ci"}},
        {},
    ],
    ids=["empty", "blank", "65-chars", "null", "number", "bool", "list", "object", "missing"],
)
def test_bad_key_names_are_a_400(auth_api, user, payload):
    response = auth_api.post(API_KEYS, payload, format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] == "validation_error"
    assert "name" in body["fields"]
    assert not ApiKey.objects.filter(user=user).exists()


def test_a_64_char_name_is_accepted(auth_api):
    assert create_key(auth_api, "x" * 64)["name"] == "x" * 64


# --- authenticating with a key ------------------------------------------------------------------


@pytest.mark.parametrize("header", ["x-api-key", "bearer"])
def test_key_authenticates_me(auth_api, user, header):
    raw = create_key(auth_api)["key"]
    response = with_key(raw, header=header).get(ME)
    assert response.status_code == 200, response.content
    assert response.json()["id"] == str(user.pk)
    assert response.json()["email"] == user.email


@pytest.mark.parametrize(
    "credential",
    [
        "vk_live_" + "A" * 43,  # well-formed, unknown
        "vk_live_" + "A" * 200,  # too long
        "vk_live_short",  # too short
        "vk_live_" + "é" * 40,  # not ASCII
        "garbage",  # neither a key nor a JWT
    ],
    ids=["unknown", "too-long", "too-short", "non-ascii", "garbage"],
)
def test_bad_keys_are_a_401_invalid_token(credential):
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=credential)
    response = client.get(ME)
    assert_error(response, 401, "invalid_token")


def test_an_almost_right_key_is_rejected(auth_api):
    raw = create_key(auth_api)["key"]
    assert with_key(raw).get(ME).status_code == 200
    tampered = raw[:-1] + ("A" if raw[-1] != "A" else "B")
    assert_error(with_key(tampered).get(ME), 401, "invalid_token")


def test_key_of_an_inactive_user_is_a_401(auth_api, user):
    raw = create_key(auth_api)["key"]
    assert with_key(raw).get(ME).status_code == 200  # warms the cache
    account = User.objects.get(pk=user.pk)
    account.is_active = False
    account.save()
    assert_error(with_key(raw).get(ME), 401, "invalid_token")


# --- revocation --------------------------------------------------------------------------------------


def test_deleted_key_stops_working_at_once(auth_api):
    created = create_key(auth_api)
    key_client = with_key(created["key"])
    assert key_client.get(ME).status_code == 200  # the key record is now cached
    response = auth_api.delete(key_url(created["id"]))
    assert response.status_code == 204
    assert response.content == b""
    assert_error(key_client.get(ME), 401, "invalid_token")
    assert ApiKey.objects.get(pk=created["id"]).revoked_at is not None


def test_deleting_a_key_twice_is_a_404(auth_api):
    created = create_key(auth_api)
    assert auth_api.delete(key_url(created["id"])).status_code == 204
    assert_error(auth_api.delete(key_url(created["id"])), 404, "not_found")


def test_deleting_an_unknown_key_is_a_404(auth_api):
    assert_error(auth_api.delete(key_url(uuid.uuid4())), 404, "not_found")


def test_deleting_another_users_key_is_a_404_and_it_keeps_working(auth_api):
    owner = UserFactory()
    theirs = create_key(session_client(owner), "theirs")
    assert_error(auth_api.delete(key_url(theirs["id"])), 404, "not_found")
    assert ApiKey.objects.get(pk=theirs["id"]).revoked_at is None
    response = with_key(theirs["key"]).get(ME)
    assert response.status_code == 200
    assert response.json()["id"] == str(owner.pk)


# --- what a key may not do -------------------------------------------------------------------------------


def test_a_key_can_read_me_but_not_do_session_work(auth_api, user):
    created = create_key(auth_api)
    key_client = with_key(created["key"])
    assert key_client.get(ME).status_code == 200
    attempts = {
        "logout": key_client.post(LOGOUT, {"scope": "global"}, format="json"),
        "password": key_client.post(
            PASSWORD,
            {"current_password": DEFAULT_PASSWORD, "new_password": "another fine passphrase 7"},
            format="json",
        ),
        "list keys": key_client.get(API_KEYS),
        "create key": key_client.post(API_KEYS, {"name": "more"}, format="json"),
        "delete key": key_client.delete(key_url(created["id"])),
    }
    for name, response in attempts.items():
        assert response.status_code == 403, (name, response.content)
        assert response.json()["error"] == "forbidden", name
    # Nothing happened: the session, the password and the keys are as they were.
    assert auth_api.get(ME).status_code == 200
    assert User.objects.get(pk=user.pk).check_password(DEFAULT_PASSWORD)
    assert list(ApiKey.objects.filter(user=user, revoked_at__isnull=True).values_list("pk", flat=True)) == [
        uuid.UUID(created["id"])
    ]


# --- last_used_at, off the request path ---------------------------------------------------------------------


def test_last_used_at_is_written_after_the_request_not_during_it(auth_api):
    created = create_key(auth_api)
    touch.flush()  # start from an empty buffer
    with CaptureQueriesContext(connection) as queries:
        assert with_key(created["key"]).get(ME).status_code == 200
    writes = [
        q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE") and "auth_api_keys" in q["sql"]
    ]
    assert writes == []
    assert ApiKey.objects.get(pk=created["id"]).last_used_at is None
    assert ("apikey.last_used_at", uuid.UUID(created["id"])) in touch.pending()
    assert touch.flush() >= 1
    assert ApiKey.objects.get(pk=created["id"]).last_used_at is not None


# --- admin ------------------------------------------------------------------------------------------------------


def test_admin_changelist_shows_the_prefix_never_the_hash(client, auth_api):
    created = create_key(auth_api, "visible in admin")
    stored = ApiKey.objects.get(pk=created["id"])
    client.force_login(User.objects.create_superuser("keys-admin@example.com", "plum-harbour-velvet-42"))
    response = client.get(ADMIN_API_KEYS)
    assert response.status_code == 200, f"no ApiKey admin at {ADMIN_API_KEYS} ({response.status_code})"
    html = response.content.decode()
    assert stored.prefix in html
    assert stored.key_hash not in html
    assert created["key"] not in html
    change = client.get(f"{ADMIN_API_KEYS}{stored.pk}/change/")
    assert change.status_code == 200
    assert stored.key_hash not in change.content.decode()


def test_admin_user_page_lists_the_users_keys_by_prefix_only(client, auth_api, user):
    created = create_key(auth_api, "inline")
    stored = ApiKey.objects.get(pk=created["id"])
    client.force_login(User.objects.create_superuser("keys-admin@example.com", "plum-harbour-velvet-42"))
    response = client.get(f"/admin/accounts/user/{user.pk}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    assert stored.prefix in html
    assert stored.key_hash not in html
    assert created["key"] not in html


def test_admin_revoke_action_ends_the_key_at_once(client, auth_api):
    created = create_key(auth_api, "to revoke")
    key_client = with_key(created["key"])
    assert key_client.get(ME).status_code == 200  # cached
    client.force_login(User.objects.create_superuser("keys-admin@example.com", "plum-harbour-velvet-42"))
    response = client.post(ADMIN_API_KEYS, {"action": "revoke_keys", "_selected_action": [created["id"]]}, follow=True)
    assert response.status_code == 200
    assert ApiKey.objects.get(pk=created["id"]).revoked_at is not None
    assert_error(key_client.get(ME), 401, "invalid_token")
