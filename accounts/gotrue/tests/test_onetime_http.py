"""GoTrue's code and link endpoints over HTTP (in process): validation, limits, redirects, PKCE."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qs, urlsplit

import pytest
from rest_framework.test import APIClient

from accounts.models import OneTimeTokenPurpose as Purpose
from accounts.onetime import ott_issue
from accounts.redirects import redirect_allowed, redirect_target
from accounts.tests.factories import UserFactory
from accounts.tests.support import ANON_KEY

pytestmark = pytest.mark.django_db

SITE = "https://app.example.com"


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.SUPABASE_ANON_KEY = ANON_KEY
    settings.GOTRUE_SITE_URL = SITE
    settings.GOTRUE_URI_ALLOW_LIST = ["https://*.preview.example.com/**", "myapp://callback"]
    settings.GOTRUE_SMTP_MAX_FREQUENCY = 0


@pytest.fixture
def api() -> APIClient:
    client = APIClient()
    client.credentials(HTTP_APIKEY=ANON_KEY)
    return client


def _error(response) -> tuple[int, str]:
    return response.status_code, response.json()["error_code"]


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://app.example.com/welcome?x=1", True),
        ("https://app.example.com:8443/", False),
        ("http://app.example.com/", False),
        ("https://feature-1.preview.example.com/cb", True),
        ("https://a.b.preview.example.com/cb", False),  # `*` stops at a dot
        ("myapp://callback", True),
        ("http://127.0.0.1:3000/cb", True),  # loopback, as GoTrue
        ("https://evil.example/steal", False),
        ("https://app.example.com.evil.example/", False),
        ("//evil.example/", False),
        ("javascript:alert(1)", False),
        ("https://app.example.com\\@evil.example/", False),
        ("http://2130706433/", False),  # a decimal IP
        ("", False),
    ],
)
def test_redirects_go_only_to_the_site_or_the_allow_list(url, allowed):
    assert redirect_allowed(url) is allowed
    assert redirect_target(url) == (url if allowed else SITE)


def test_recover_validates_its_input_in_gotrue_shape(api):
    assert _error(api.post("/auth/v1/recover", {}, format="json")) == (400, "validation_failed")
    assert _error(api.post("/auth/v1/recover", {"email": "not an email"}, format="json")) == (400, "validation_failed")
    half_pkce = {"email": "a@example.com", "code_challenge": "c" * 43}
    assert _error(api.post("/auth/v1/recover", half_pkce, format="json")) == (400, "validation_failed")
    short = {"email": "a@example.com", "code_challenge": "c" * 10, "code_challenge_method": "s256"}
    assert _error(api.post("/auth/v1/recover", short, format="json")) == (400, "validation_failed")


def test_the_per_ip_send_limit_answers_over_request_rate_limit(api, settings):
    settings.RATELIMIT_OTT_SEND_IP = (2, 3600)
    for address in ("a@example.com", "b@example.com"):
        assert api.post("/auth/v1/recover", {"email": address}, format="json").status_code == 200
    refused = api.post("/auth/v1/recover", {"email": "c@example.com"}, format="json")
    assert _error(refused) == (429, "over_request_rate_limit") and refused["Retry-After"]


def test_verify_validates_type_and_token_as_gotrue(api):
    cases = [
        ({"token": "123456", "email": "a@example.com"}, "Verify requires a verification type"),
        ({"type": "email", "token": "1", "token_hash": "t"}, "Verify requires either a token or a token hash"),
        (
            {"type": "email", "token_hash": "t", "email": "a@example.com"},
            "Only the token_hash and type should be provided",
        ),
        ({"type": "nonsense", "token_hash": "t"}, "Unsupported verification type"),
    ]
    for body, message in cases:
        response = api.post("/auth/v1/verify", body, format="json")
        assert (response.status_code, response.json()["msg"]) == (400, message), body
    sms = api.post("/auth/v1/verify", {"type": "sms", "token": "1", "phone": "+15555550100"}, format="json")
    assert _error(sms) == (400, "phone_provider_disabled")


def test_a_link_token_verifies_by_post_as_token_hash_once(api):
    user = UserFactory()
    issued = ott_issue(user=user, purpose=Purpose.MAGICLINK, sent_to=user.email)
    first = api.post("/auth/v1/verify", {"type": "magiclink", "token_hash": issued.link_token}, format="json")
    assert first.status_code == 200 and first.json()["user"]["id"] == str(user.pk)
    again = api.post("/auth/v1/verify", {"type": "magiclink", "token_hash": issued.link_token}, format="json")
    assert _error(again) == (403, "otp_expired") and again.json()["msg"] == "Email link is invalid or has expired"


def test_following_a_link_needs_no_apikey_and_a_bad_one_lands_on_the_error_at_the_site():
    response = APIClient().get("/auth/v1/verify", {"token": "nope", "type": "recovery", "redirect_to": "https://x.io"})
    assert response.status_code == 303
    location = urlsplit(response["Location"])
    assert f"{location.scheme}://{location.netloc}" == SITE
    assert parse_qs(location.fragment)["error_code"] == ["otp_expired"]


def test_pkce_code_exchange_checks_the_verifier_and_is_good_once(api):
    user = UserFactory()
    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    issued = ott_issue(
        user=user, purpose=Purpose.RECOVERY, sent_to=user.email, code_challenge=challenge, code_challenge_method="s256"
    )
    assert issued.link_token.startswith("pkce_")
    followed = APIClient().get("/auth/v1/verify", {"token": issued.link_token, "type": "recovery"})
    code = parse_qs(urlsplit(followed["Location"]).query)["code"][0]
    exchange = "/auth/v1/token?grant_type=pkce"
    wrong = api.post(exchange, {"auth_code": code, "code_verifier": "w" * 50}, format="json")
    assert _error(wrong) == (400, "bad_code_verifier")
    session = api.post(exchange, {"auth_code": code, "code_verifier": verifier}, format="json")
    assert session.status_code == 200 and session.json()["user"]["id"] == str(user.pk)
    again = api.post(exchange, {"auth_code": code, "code_verifier": verifier}, format="json")
    assert _error(again) == (404, "flow_state_not_found")
