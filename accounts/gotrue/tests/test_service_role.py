"""The service-role key on the GoTrue surface: accepted as `apikey` everywhere
(so server code's `getUser(jwt)` works), and the admin API's only credential
(accounts.gotrue.authentication.service_role_check)."""

from __future__ import annotations

import time

import jwt
import pytest
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from accounts.gotrue.authentication import service_role_check
from accounts.gotrue.errors import GoTrueError
from accounts.tests.factories import DEFAULT_PASSWORD
from accounts.tests.support import ANON_KEY, supabase_project
from accounts.tests.support import PROJECT_JWT_SECRET as SECRET
from accounts.tests.support import SERVICE_ROLE_KEY as SERVICE_KEY

pytestmark = pytest.mark.django_db(transaction=False)

USER = "/auth/v1/user"
SETTINGS = "/auth/v1/settings"


@pytest.fixture(autouse=True)
def _supabase_settings(settings):
    supabase_project(settings, service_role=True)


def legacy_key(role: str, secret: str = SECRET) -> str:
    """A project key as Supabase issued them before its new API keys: an HS256 JWT with a role."""
    now = int(time.time())
    return jwt.encode({"iss": "supabase", "role": role, "iat": now, "exp": now + 3600}, secret, algorithm="HS256")


def access_token(api, user) -> str:
    response = api.post(
        "/auth/v1/token?grant_type=password",
        {"email": user.email, "password": DEFAULT_PASSWORD},
        format="json",
        HTTP_APIKEY=ANON_KEY,
    )
    assert response.status_code == 200, response.content
    return response.json()["access_token"]


def admin_check(**headers: str) -> GoTrueError | None:
    request = APIRequestFactory().get("/auth/v1/admin/users", **headers)
    try:
        service_role_check(Request(request))
    except GoTrueError as exc:
        return exc
    return None


def test_the_service_role_key_is_accepted_as_apikey_like_the_anon_key(api):
    assert api.get(SETTINGS, HTTP_APIKEY=SERVICE_KEY).status_code == 200
    assert api.get(SETTINGS, HTTP_APIKEY=SERVICE_KEY + "x").status_code == 401


def test_server_code_reads_a_user_from_their_token_with_the_service_role_key(api, user):
    token = access_token(api, user)
    response = api.get(USER, HTTP_APIKEY=SERVICE_KEY, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200
    assert response.json()["id"] == str(user.pk)


def test_legacy_jwt_form_keys_are_accepted_as_apikey_when_signed_with_the_project_secret(api):
    assert api.get(SETTINGS, HTTP_APIKEY=legacy_key("service_role")).status_code == 200
    assert api.get(SETTINGS, HTTP_APIKEY=legacy_key("anon")).status_code == 200
    assert api.get(SETTINGS, HTTP_APIKEY=legacy_key("service_role", "another-secret-" + "x" * 30)).status_code == 401
    assert api.get(SETTINGS, HTTP_APIKEY=legacy_key("authenticated")).status_code == 401


def test_the_admin_credential_is_the_service_role_key_as_bearer_or_apikey():
    assert admin_check(HTTP_AUTHORIZATION=f"Bearer {SERVICE_KEY}") is None
    assert admin_check(HTTP_APIKEY=SERVICE_KEY) is None
    assert admin_check(HTTP_AUTHORIZATION=f"Bearer {legacy_key('service_role')}") is None
    assert admin_check(HTTP_AUTHORIZATION=f"Bearer {legacy_key('supabase_admin')}") is None


def test_the_anon_key_a_users_token_or_a_forged_key_get_403_not_admin(api, user):
    token = access_token(api, user)
    for credential in (ANON_KEY, token, legacy_key("anon"), legacy_key("service_role", "forged-" + "f" * 40)):
        refused = admin_check(HTTP_AUTHORIZATION=f"Bearer {credential}", HTTP_APIKEY=SERVICE_KEY)
        assert refused is not None and (refused.status_code, refused.error_code) == (403, "not_admin")


def test_no_admin_credential_at_all_is_401_no_authorization():
    refused = admin_check()
    assert refused is not None and (refused.status_code, refused.error_code) == (401, "no_authorization")
    malformed = admin_check(HTTP_AUTHORIZATION=f"Basic {SERVICE_KEY}")
    assert malformed is not None and malformed.status_code == 401
