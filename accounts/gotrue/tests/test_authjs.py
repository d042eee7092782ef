"""The official JavaScript client, @supabase/auth-js (pinned in js/package.json, run under node),
against the live test server: what supabase-js apps in browsers and on Node run.

Each test runs one scenario of js/run.mjs in a node subprocess (accounts/tests/support.py
run_authjs) and asserts on the JSON it prints: the client's own answers (its error classes,
codes and statuses, its stored session) and the exchanges it made (`requests`: method, path,
status and the GoTrue code of each answer). test_client.py does the same with the Python client.

live_server runs in a thread of this process; rate limits count per 127.0.0.1, so they are off.
"""

from __future__ import annotations

import pytest

from accounts.models import Session, User
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import ANON_KEY, STRONG, STRONGER, run_authjs, supabase_project

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ORIGIN = "https://app.example"


@pytest.fixture(autouse=True)
def _supabase_settings(settings):
    supabase_project(settings)


@pytest.fixture
def authjs(live_server):
    """run_authjs against this test's live server, with the anon key."""

    def _run(scenario: str, **args) -> dict:
        return run_authjs(scenario, url=f"{live_server.url}/auth/v1", apikey=ANON_KEY, **args)

    return _run


def answered(result: dict, path: str) -> list[tuple[int, str | None]]:
    """(status, GoTrue code) of each exchange the client made with `path` (the query string aside)."""
    return [(r["status"], r["code"]) for r in result["requests"] if r["path"].split("?")[0] == f"/auth/v1/{path}"]


def test_sign_up_returns_a_session_the_client_stores_and_get_user_reads_back(authjs):
    result = authjs("signUp", email="js-signup@example.com", password=STRONG, data={"full_name": "Ada Lovelace"})
    signup = result["signUp"]
    assert signup["error"] is None
    assert signup["session"]["token_type"] == "bearer"
    assert signup["session"]["refresh_token"]
    assert signup["session"]["expires_at"] > 0
    user = signup["user"]
    assert user["email"] == "js-signup@example.com"
    assert user["user_metadata"] == {"full_name": "Ada Lovelace"}
    assert user["app_metadata"]["provider"] == "email"
    assert user["email_confirmed_at"] is not None
    assert user["identities"] == ["email"]
    assert user["is_anonymous"] is False
    assert result["storedSession"]["access_token"] == signup["session"]["access_token"]
    assert result["getUser"] == {"error": None, "user": user}
    assert User.objects.get(pk=user["id"]).display_name == "Ada Lovelace"


def test_sign_in_with_password_then_get_user_returns_the_signed_in_user(authjs):
    user = UserFactory(email="js-signin@example.com")
    result = authjs("signInWithPassword", email="js-signin@example.com", password=DEFAULT_PASSWORD)
    assert result["signIn"]["error"] is None
    assert result["signIn"]["session"]["user"]["id"] == str(user.pk)
    assert result["getUser"]["error"] is None
    assert result["getUser"]["user"]["id"] == str(user.pk)
    assert result["getUser"]["user"]["aud"] == "authenticated"
    assert result["getUser"]["user"]["role"] == "authenticated"
    assert result["storedSession"]["access_token"] == result["signIn"]["session"]["access_token"]
    assert answered(result, "token") == [(200, None)]
    assert answered(result, "user") == [(200, None)]
    assert Session.objects.filter(user=user, revoked_at__isnull=True).count() == 1


@pytest.mark.parametrize(
    ("api_version", "email"),
    [
        ("2024-01-01", "js-wrong@example.com"),  # what auth-js sends by default
        ("2023-06-01", "js-wrong@example.com"),  # an older date: GoTrue's first error shape
        ("2024-01-01", "js-nobody@example.com"),  # an unknown address answers the same
    ],
)
def test_a_wrong_password_is_an_auth_api_error_with_code_invalid_credentials_and_status_400(authjs, api_version, email):
    UserFactory(email="js-wrong@example.com")
    result = authjs(
        "signInWithPassword",
        email=email,
        password="not the password",
        headers={"X-Supabase-Api-Version": api_version},
    )
    assert result["signIn"]["error"] == {
        "name": "AuthApiError",
        "status": 400,
        "code": "invalid_credentials",
        "message": "Invalid login credentials",
    }
    assert result["signIn"]["session"] is None
    assert result["storedSession"] is None


def test_sign_in_over_the_rate_limit_is_over_request_rate_limit_with_a_readable_retry_after(authjs, settings):
    settings.RATELIMIT_ENABLE = True
    settings.RATELIMIT_LOGIN_IP = (2, 300)
    UserFactory(email="js-limit@example.com")
    for _ in range(2):
        assert (
            authjs("signInWithPassword", email="js-limit@example.com", password=DEFAULT_PASSWORD)["signIn"]["error"]
            is None
        )
    limited = authjs("signInWithPassword", origin=ORIGIN, email="js-limit@example.com", password=DEFAULT_PASSWORD)
    error = limited["signIn"]["error"]
    assert (error["name"], error["status"], error["code"]) == ("AuthApiError", 429, "over_request_rate_limit")
    assert limited["corsViolations"] == []
    [exchange] = limited["requests"]
    assert int(exchange["retryAfter"]) > 0


def test_sign_up_with_a_weak_password_is_the_clients_weak_password_error(authjs):
    result = authjs("signUp", email="js-weak@example.com", password="short")
    error = result["signUp"]["error"]
    assert error["name"] == "AuthWeakPasswordError"
    assert (error["status"], error["code"]) == (422, "weak_password")
    assert "length" in error["reasons"]
    assert not User.objects.filter(email="js-weak@example.com").exists()


def test_signing_up_a_taken_email_is_user_already_exists(authjs):
    UserFactory(email="js-taken@example.com")
    result = authjs("signUp", email="js-taken@example.com", password=STRONG)
    error = result["signUp"]["error"]
    assert (error["name"], error["status"], error["code"]) == ("AuthApiError", 422, "user_already_exists")


def test_refresh_session_rotates_the_refresh_token_and_the_client_keeps_the_new_session(authjs):
    UserFactory(email="js-refresh@example.com")
    result = authjs("refreshSession", email="js-refresh@example.com", password=DEFAULT_PASSWORD)
    first, refreshed = result["first"], result["refresh"]["session"]
    assert result["refresh"]["error"] is None
    assert refreshed["refresh_token"] != first["refresh_token"]
    assert refreshed["user"]["email"] == "js-refresh@example.com"
    assert result["storedSession"]["refresh_token"] == refreshed["refresh_token"]
    assert result["getUser"]["user"]["email"] == "js-refresh@example.com"
    assert answered(result, "token") == [(200, None), (200, None)]
    assert Session.objects.get(user__email="js-refresh@example.com").refresh_tokens.count() == 2


def test_set_session_adopts_a_session_from_elsewhere_then_reads_the_user_and_refreshes_it(authjs):
    user = UserFactory(email="js-setsession@example.com")
    result = authjs("setSession", email="js-setsession@example.com", password=DEFAULT_PASSWORD)
    assert result["setSession"]["error"] is None
    assert result["setSession"]["session"]["access_token"] == result["original"]["access_token"]
    assert result["getUser"]["user"]["id"] == str(user.pk)
    assert result["refresh"]["error"] is None
    assert result["refresh"]["session"]["refresh_token"] != result["original"]["refresh_token"]


def test_get_claims_returns_the_claims_of_the_signed_in_session(authjs):
    user = UserFactory(email="js-claims@example.com")
    result = authjs("getClaims", email="js-claims@example.com", password=DEFAULT_PASSWORD)
    assert result["error"] is None
    claims = result["claims"]
    assert claims["sub"] == str(user.pk)
    assert claims["email"] == "js-claims@example.com"
    assert (claims["aud"], claims["role"], claims["aal"]) == ("authenticated", "authenticated", "aal1")
    assert claims["session_id"] == str(Session.objects.get(user=user).pk)
    assert claims["is_anonymous"] is False
    assert result["header"]["alg"] == "ES256" and result["header"]["kid"]
    # Verified locally against the JWKS, not by asking the server (GET /user).
    asked = [(request["method"], request["path"].split("?")[0]) for request in result["requests"]]
    assert ("GET", "/auth/v1/.well-known/jwks.json") in asked
    assert ("GET", "/auth/v1/user") not in asked


def test_sign_in_anonymously_is_anonymous_provider_disabled(authjs):
    result = authjs("signInAnonymously")
    error = result["error"]
    assert (error["name"], error["status"], error["code"]) == ("AuthApiError", 422, "anonymous_provider_disabled")
    assert result["session"] is None


def test_update_user_merges_metadata(authjs):
    UserFactory(email="js-meta@example.com")
    result = authjs(
        "updateUser",
        email="js-meta@example.com",
        password=DEFAULT_PASSWORD,
        updates=[{"data": {"theme": "dark"}}, {"data": {"locale": "fr"}}],
    )
    assert [update["error"] for update in result["updates"]] == [None, None]
    assert result["updates"][1]["user"]["user_metadata"] == {"theme": "dark", "locale": "fr"}
    assert result["getUser"]["user"]["user_metadata"] == {"theme": "dark", "locale": "fr"}
    assert result["otherToken"]["error"] is None  # a profile change ends no session


def test_update_user_password_needs_current_password_then_ends_the_other_sessions(authjs):
    """Secure password change (GOTRUE_PASSWORD_CHANGE_REQUIRES_CURRENT_PASSWORD, on by default):
    auth-js passes `current_password` through updateUser's attributes as GoTrue reads it."""
    UserFactory(email="js-password@example.com")
    result = authjs(
        "updateUser",
        email="js-password@example.com",
        password=DEFAULT_PASSWORD,
        updates=[
            {"password": STRONGER},
            {"password": STRONGER, "current_password": ""},  # an empty form field: GoTrue's "required" too
            {"password": STRONGER, "current_password": "not the password"},
            {"password": DEFAULT_PASSWORD, "current_password": DEFAULT_PASSWORD},
            {"password": STRONGER, "current_password": DEFAULT_PASSWORD},
        ],
    )
    errors = [u["error"] and (u["error"]["name"], u["error"]["status"], u["error"]["code"]) for u in result["updates"]]
    assert errors == [
        ("AuthApiError", 400, "current_password_required"),
        ("AuthApiError", 400, "current_password_required"),
        ("AuthApiError", 400, "current_password_invalid"),
        ("AuthApiError", 422, "same_password"),
        None,
    ]
    assert result["updates"][4]["user"]["email"] == "js-password@example.com"
    assert result["getUser"]["error"] is None  # this session survives its own change
    assert result["otherToken"]["error"]["name"] == "AuthSessionMissingError"
    assert answered(result, "user")[-1] == (403, "session_not_found")
    old = authjs("signInWithPassword", email="js-password@example.com", password=DEFAULT_PASSWORD)
    assert old["signIn"]["error"]["code"] == "invalid_credentials"
    new = authjs("signInWithPassword", email="js-password@example.com", password=STRONGER)
    assert new["signIn"]["error"] is None


def test_update_user_password_without_current_password_when_the_session_is_proof_enough(authjs, settings):
    settings.GOTRUE_PASSWORD_CHANGE_REQUIRES_CURRENT_PASSWORD = False  # self-hosted GoTrue's default
    UserFactory(email="js-nocurrent@example.com")
    result = authjs(
        "updateUser", email="js-nocurrent@example.com", password=DEFAULT_PASSWORD, updates=[{"password": STRONGER}]
    )
    assert result["updates"][0]["error"] is None
    assert User.objects.get(email="js-nocurrent@example.com").check_password(STRONGER)


@pytest.mark.parametrize(
    ("scope", "this_ended", "other_ended"),
    [
        (None, True, True),  # auth-js's default: global
        ("global", True, True),
        ("local", True, False),
        ("others", False, True),
    ],
)
def test_sign_out_ends_the_sessions_its_scope_names_and_their_access_tokens_are_refused(
    authjs, scope, this_ended, other_ended
):
    UserFactory(email="js-signout@example.com")
    args = {"scope": scope} if scope else {}
    result = authjs("signOut", email="js-signout@example.com", password=DEFAULT_PASSWORD, **args)
    assert result["signOut"] == {"error": None}
    assert answered(result, "logout") == [(204, None)]
    assert [r["path"] for r in result["requests"] if r["path"].startswith("/auth/v1/logout")] == [
        f"/auth/v1/logout?scope={scope or 'global'}"
    ]
    # auth-js forgets its session unless the scope was "others".
    assert (result["storedSession"] is None) is this_ended
    for token, ended in ((result["thisToken"], this_ended), (result["otherToken"], other_ended)):
        if ended:
            # GoTrue's 403 session_not_found, which auth-js surfaces as a missing session.
            assert token["error"]["name"] == "AuthSessionMissingError"
            assert token["user"] is None
        else:
            assert token["error"] is None
            assert token["user"]["email"] == "js-signout@example.com"
    assert answered(result, "user") == [
        (403, "session_not_found") if ended else (200, None) for ended in (this_ended, other_ended)
    ]
    refresh = result["thisRefresh"]["error"]
    if this_ended:
        assert (refresh["name"], refresh["status"], refresh["code"]) == ("AuthApiError", 400, "refresh_token_not_found")
    else:
        assert refresh is None
    active = Session.objects.filter(user__email="js-signout@example.com", revoked_at__isnull=True).count()
    assert active == 2 - this_ended - other_ended


@pytest.mark.parametrize("api_version", ["2024-01-01", "2023-06-01"])
def test_an_unknown_endpoint_is_a_404_auth_api_error_in_gotrues_shape(authjs, api_version):
    result = authjs(
        "request", method="POST", path="/no-such-endpoint", body={}, headers={"X-Supabase-Api-Version": api_version}
    )
    error = result["error"]
    assert (error["name"], error["status"], error["code"]) == ("AuthApiError", 404, "not_found")
    assert error["message"] == "/auth/v1/no-such-endpoint is not supported by this server"
    assert answered(result, "no-such-endpoint") == [(404, "not_found")]


def test_a_browser_page_on_another_origin_can_read_every_answer_it_gets(authjs):
    """run.mjs's browser mode: a preflight where a browser sends one, the allow-origin check on
    every answer (errors and the 404 catch-all included), only exposed headers readable (auth-js
    reads X-Supabase-Api-Version to parse error codes)."""
    result = authjs("browserSession", origin=ORIGIN, email="js-browser@example.com", password=STRONG)
    assert result["corsViolations"] == []
    assert result["signUp"]["error"] is None
    assert result["wrongPassword"]["error"]["code"] == "invalid_credentials"
    assert result["signIn"]["error"] is None
    assert result["getUser"]["user"]["email"] == "js-browser@example.com"
    assert result["updateUser"]["user"]["user_metadata"] == {"theme": "dark"}
    assert result["refresh"]["error"] is None
    assert (result["unknownEndpoint"]["status"], result["unknownEndpoint"]["code"]) == (404, "not_found")
    assert result["signOut"] == {"error": None}
    assert result["afterSignOut"]["error"]["name"] == "AuthSessionMissingError"
    statuses = {r["status"] for r in result["requests"]}
    assert {200, 204, 400, 403, 404} <= statuses


def test_a_browser_page_on_an_origin_not_allowed_cannot_read_the_answers(authjs, settings):
    settings.CORS_ALLOW_ALL_ORIGINS = False
    settings.CORS_ALLOWED_ORIGINS = [ORIGIN]
    UserFactory(email="js-cors@example.com")
    allowed = authjs("signInWithPassword", origin=ORIGIN, email="js-cors@example.com", password=DEFAULT_PASSWORD)
    assert allowed["corsViolations"] == []
    assert allowed["signIn"]["error"] is None
    refused = authjs(
        "signInWithPassword", origin="https://evil.example", email="js-cors@example.com", password=DEFAULT_PASSWORD
    )
    assert refused["signIn"]["error"]["name"] == "AuthRetryableFetchError"  # how auth-js reports a CORS failure
    assert refused["signIn"]["error"]["status"] == 0
    assert refused["corsViolations"] == [
        {
            "method": "POST",
            "path": "/auth/v1/token?grant_type=password",
            "reason": "preflight without a matching allow-origin",
        }
    ]
