"""The JWKS of both surfaces, and the official clients verifying tokens from it
against the live server: PyJWT's PyJWKClient (what a downstream service runs)
and supabase_auth's get_claims() (what a supabase-py app runs)."""

from __future__ import annotations

import jwt
import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient
from supabase_auth.errors import AuthInvalidJwtError

from accounts import signing
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import api_login, signing_keys_warm

GOTRUE_JWKS = "/auth/v1/.well-known/jwks.json"
NATIVE_JWKS = "/api/v1/auth/.well-known/jwks.json"
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi"}
ANON_KEY = "anon-key-" + "j" * 30


@pytest.fixture(autouse=True)
def _anon_key_required(settings):
    # Every other /auth/v1/ route needs the apikey here; the JWKS must not.
    settings.SUPABASE_ANON_KEY = ANON_KEY
    settings.RATELIMIT_ENABLE = False


def kids(body: dict) -> list[str]:
    return [jwk["kid"] for jwk in body["keys"]]


@pytest.mark.django_db
@pytest.mark.parametrize("path", [GOTRUE_JWKS, NATIVE_JWKS])
def test_the_jwks_publishes_the_public_keys_only_with_gotrues_members(path):
    signing_keys_warm()
    standby = signing.signing_key_add(algorithm="RS256")
    response = APIClient().get(path)  # no apikey
    assert response.status_code == 200
    assert response["Cache-Control"] == f"public, max-age={settings.JWKS_MAX_AGE_SECONDS}"
    body = response.json()
    assert set(body) == {"keys"}
    assert len(body["keys"]) == 2
    for jwk in body["keys"]:
        assert not PRIVATE_MEMBERS & set(jwk), jwk
        assert jwk["use"] == "sig" and jwk["key_ops"] == ["verify"]
    ec, rsa = sorted(body["keys"], key=lambda jwk: jwk["kty"])
    assert set(ec) == {"kty", "crv", "x", "y", "kid", "alg", "use", "key_ops"}
    assert (ec["kty"], ec["crv"], ec["alg"]) == ("EC", "P-256", "ES256")
    assert set(rsa) == {"kty", "n", "e", "kid", "alg", "use", "key_ops"}
    assert (rsa["alg"], rsa["kid"]) == ("RS256", standby.kid)  # published before it signs


@pytest.mark.django_db
def test_both_jwks_paths_list_the_same_keys_and_drop_a_revoked_one():
    signing_keys_warm()
    standby = signing.signing_key_add()
    both = [APIClient().get(path).json() for path in (GOTRUE_JWKS, NATIVE_JWKS)]
    assert both[0] == both[1]
    signing.signing_key_revoke(kid=standby.kid)
    assert standby.kid not in kids(APIClient().get(GOTRUE_JWKS).json())
    assert standby.kid not in kids(APIClient().get(NATIVE_JWKS).json())


@pytest.mark.django_db
def test_the_gotrue_jwks_answers_cors_like_the_rest_of_auth_v1():
    signing_keys_warm()
    response = APIClient().get(GOTRUE_JWKS, HTTP_ORIGIN="https://app.example.com")
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == "*"
    preflight = APIClient().options(
        GOTRUE_JWKS, HTTP_ORIGIN="https://app.example.com", HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET"
    )
    assert preflight["Access-Control-Allow-Origin"] == "*"


@pytest.mark.django_db
def test_the_jwks_on_a_warm_key_set_runs_no_sql():
    signing_keys_warm()
    with CaptureQueriesContext(connection) as queries:
        assert APIClient().get(GOTRUE_JWKS).status_code == 200
        assert APIClient().get(NATIVE_JWKS).status_code == 200
    assert queries.captured_queries == []


# --- the official clients, against the live server --------------------------------------------


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_native_token_verifies_with_pyjwkclient_from_the_native_jwks(live_server):
    user = UserFactory()
    token = api_login(user.email)["access_token"]
    client = jwt.PyJWKClient(f"{live_server.url}{NATIVE_JWKS}", cache_keys=False)
    key = client.get_signing_key_from_jwt(token)
    assert key.key_id == jwt.get_unverified_header(token)["kid"]
    claims = jwt.decode(token, key, algorithms=["ES256"], audience=settings.JWT_AUDIENCE, issuer=settings.JWT_ISSUER)
    assert claims["sub"] == str(user.pk)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_get_claims_verifies_an_es256_token_locally_from_the_gotrue_jwks(make_client, live_server):
    user = UserFactory(email="claims@example.com")
    session = (
        make_client(apikey=ANON_KEY).sign_in_with_password({"email": user.email, "password": DEFAULT_PASSWORD}).session
    )
    assert jwt.get_unverified_header(session.access_token)["alg"] == "ES256"
    # A client without the apikey: get_claims reaches only the JWKS (an ES256
    # token is verified locally; only HS256 ones would go to /user).
    verifier = make_client(apikey=None)
    claims = verifier.get_claims(session.access_token)
    assert claims["claims"]["sub"] == str(user.pk)
    assert claims["claims"]["session_id"]
    assert kids(verifier._jwks) == kids(APIClient().get(GOTRUE_JWKS).json())
    # A tampered payload does not verify.
    header, payload, signature = session.access_token.split(".")
    forged_payload = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(payload).replace(b'"aal1"', b'"aal2"')
    ).decode()
    with pytest.raises(AuthInvalidJwtError):
        verifier.get_claims(f"{header}.{forged_payload}.{signature}")


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_after_a_rotation_get_claims_fetches_the_new_key_and_old_tokens_still_work(make_client):
    UserFactory(email="rotate@example.com")
    signer = make_client(apikey=ANON_KEY)
    old = signer.sign_in_with_password({"email": "rotate@example.com", "password": DEFAULT_PASSWORD}).session
    verifier = make_client(apikey=None)
    assert verifier.get_claims(old.access_token)["claims"]["sub"]
    signing.signing_key_promote(kid=signing.signing_key_add().kid)
    new = signer.sign_in_with_password({"email": "rotate@example.com", "password": DEFAULT_PASSWORD}).session
    assert jwt.get_unverified_header(new.access_token)["kid"] != jwt.get_unverified_header(old.access_token)["kid"]
    assert verifier.get_claims(new.access_token)["claims"]["sub"]  # an unknown kid: the JWKS fetched again
    assert verifier.get_claims(old.access_token)["claims"]["sub"]  # the retired key is still published
    assert signer.get_user(old.access_token).user.email == "rotate@example.com"  # and the server accepts it
