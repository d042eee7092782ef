from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from datetime import UTC, datetime

import jwt
import pytest
from django.conf import settings
from rest_framework.test import APIClient

from accounts import tokens
from accounts.models import Session, User
from accounts.tests.factories import UserFactory
from accounts.tests.support import sign_token

pytestmark = [
    pytest.mark.django_db(transaction=False),
    # Attacker-side tokens below are signed with deliberately weak or mismatched keys.
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]

ME = "/api/v1/auth/me"
DROP = object()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def claims_for(session: Session, **overrides: object) -> dict:
    """Claims exactly like the server's, with `overrides` applied (DROP removes one)."""
    now = int(time.time())
    claims = {
        "iss": settings.JWT_ISSUER,
        "aud": settings.JWT_AUDIENCE,
        "sub": str(session.user_id),
        "sid": str(session.pk),
        "typ": "access",
        "iat": now,
        "nbf": now,
        "exp": now + settings.ACCESS_TOKEN_TTL_SECONDS,
    }
    for name, value in overrides.items():
        if value is DROP:
            claims.pop(name)
        else:
            claims[name] = value
    return claims


def mint(session: Session, **overrides: object) -> str:
    """Signed as the server signs: the active key, its kid in the header."""
    return sign_token(claims_for(session, **overrides))


def hand_signed(header: dict, claims: dict, key: bytes) -> str:
    """A JWS with an arbitrary header, HMAC-SHA256-signed with `key` (key-confusion attempts)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def me(authorization: str | None):
    client = APIClient()
    if authorization is not None:
        client.credentials(HTTP_AUTHORIZATION=authorization)
    return client.get(ME)


def assert_invalid_token(response) -> None:
    assert response.status_code == 401, response.content
    assert response.json()["error"] == "invalid_token"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.fixture
def session(user, login) -> Session:
    login(user)
    return Session.objects.get(user=user)


# --- the happy path ---------------------------------------------------------------


def test_login_access_token_authenticates_me(user, login):
    body = login(user)
    response = me(f"Bearer {body['access_token']}")
    assert response.status_code == 200
    assert response.json()["id"] == str(user.pk)


def test_a_verified_token_is_not_parsed_again_on_its_next_request(session, monkeypatch):
    token = mint(session)
    assert me(f"Bearer {token}").status_code == 200

    def parsed_again(token: str) -> dict:
        raise AssertionError("the header of a verified token was parsed again")

    # A hit resolves the remembered kid in the key set and checks the times only.
    monkeypatch.setattr(jwt, "get_unverified_header", parsed_again)
    assert me(f"Bearer {token}").status_code == 200


def test_a_minted_token_with_correct_claims_works(session):
    # The baseline every crafted-token rejection below is measured against.
    response = me(f"Bearer {mint(session)}")
    assert response.status_code == 200
    assert response.json()["id"] == str(session.user_id)


def test_access_token_decode_returns_the_claims(session):
    claims = tokens.access_token_decode(mint(session))
    assert claims.user_id == session.user_id
    assert claims.session_id == session.pk
    assert claims.expires_at > time.time()


def test_bearer_scheme_is_case_insensitive(session):
    assert me(f"bearer {mint(session)}").status_code == 200


def test_access_token_ttl_defaults_to_900_seconds(user, login):
    body = login(user)
    header = jwt.get_unverified_header(body["access_token"])
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert header["alg"] == "ES256"
    assert header["kid"]
    assert claims["exp"] - claims["iat"] == 900
    assert claims["nbf"] == claims["iat"]
    assert body["expires_in"] == 900
    assert body["expires_at"] == claims["exp"]
    assert abs(claims["iat"] - time.time()) < 60


def test_access_token_encode_sets_every_checked_claim():
    user_id, session_id = uuid.uuid4(), uuid.uuid4()
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    token, expires_at = tokens.access_token_encode(user_id=user_id, session_id=session_id, now=now)
    claims = jwt.decode(token, options={"verify_signature": False})
    issued = int(now.timestamp())
    assert claims == {
        "iss": settings.JWT_ISSUER,
        "aud": settings.JWT_AUDIENCE,
        "sub": str(user_id),
        "sid": str(session_id),
        "typ": "access",
        "iat": issued,
        "nbf": issued,
        "exp": issued + 900,
        "aal": "aal1",
    }
    assert expires_at == issued + 900


def test_expiry_within_the_leeway_is_still_accepted(session):
    now = int(time.time())
    token = mint(session, iat=now - 900, nbf=now - 900, exp=now - 1)
    assert settings.JWT_LEEWAY_SECONDS >= 3
    assert me(f"Bearer {token}").status_code == 200


# --- crafted tokens that must be rejected -------------------------------------------------


def _now() -> int:
    return int(time.time())


BAD_CLAIMS = {
    "wrong-aud": lambda s: {"aud": "someone-else"},
    "aud-list-without-ours": lambda s: {"aud": ["someone-else", "another"]},
    "wrong-iss": lambda s: {"iss": "https://evil.example"},
    "typ-refresh": lambda s: {"typ": "refresh"},
    "typ-missing": lambda s: {"typ": DROP},
    "expired": lambda s: {
        "iat": _now() - 3600,
        "nbf": _now() - 3600,
        "exp": _now() - settings.JWT_LEEWAY_SECONDS - 60,
    },
    "nbf-in-future": lambda s: {"nbf": _now() + settings.JWT_LEEWAY_SECONDS + 60},
    "sid-missing": lambda s: {"sid": DROP},
    "exp-missing": lambda s: {"exp": DROP},
    "iat-missing": lambda s: {"iat": DROP},
    "nbf-missing": lambda s: {"nbf": DROP},
    "iss-missing": lambda s: {"iss": DROP},
    "aud-missing": lambda s: {"aud": DROP},
    "sub-missing": lambda s: {"sub": DROP},
    "sid-not-uuid": lambda s: {"sid": "not-a-uuid"},
    "sub-not-uuid": lambda s: {"sub": "42"},
    "sid-unknown": lambda s: {"sid": str(uuid.uuid4())},
    "sub-not-the-session-owner": lambda s: {"sub": str(uuid.uuid4())},
    "exp-not-a-number": lambda s: {"exp": "tomorrow"},
    "sid-is-an-object": lambda s: {"sid": {"id": str(s.pk)}},
}


@pytest.mark.parametrize("case", list(BAD_CLAIMS), ids=list(BAD_CLAIMS))
def test_token_with_bad_claims_is_a_401_invalid_token(session, case):
    token = mint(session, **BAD_CLAIMS[case](session))
    assert_invalid_token(me(f"Bearer {token}"))


@pytest.mark.parametrize(
    "case",
    [c for c in BAD_CLAIMS if c not in {"sid-unknown", "sub-not-the-session-owner"}],
)
def test_access_token_decode_rejects_bad_claims(session, case):
    # sid-unknown / sub-not-the-session-owner are well-formed: the session check rejects them.
    with pytest.raises(tokens.InvalidAccessToken):
        tokens.access_token_decode(mint(session, **BAD_CLAIMS[case](session)))


def test_a_token_of_another_users_session_cannot_be_reassigned(session, login):
    other = UserFactory()
    login(other)
    other_session = Session.objects.get(user=other)
    # The attacker's own (valid) session id with the victim's user id.
    token = mint(other_session, sub=str(session.user_id))
    assert_invalid_token(me(f"Bearer {token}"))


def test_alg_none_token_is_rejected(session):
    token = jwt.encode(claims_for(session), None, algorithm="none")
    assert token.endswith(".")
    assert_invalid_token(me(f"Bearer {token}"))
    with pytest.raises(tokens.InvalidAccessToken):
        tokens.access_token_decode(token)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_hand_built_unsigned_tokens_are_rejected(session, alg):
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims_for(session)).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}"):
        assert_invalid_token(me(f"Bearer {token}"))


@pytest.mark.parametrize(
    "key",
    [b"another-key-that-is-32-bytes-long!!", b"velro", "secret-key"],
    ids=["random-key", "short-key", "django-secret-key"],
)
def test_token_signed_with_another_key_is_rejected(session, key):
    signing_key = settings.SECRET_KEY.encode() if key == "secret-key" else key
    assert signing_key != tokens.jwt_key()
    token = jwt.encode(claims_for(session), signing_key, algorithm="HS256")
    assert_invalid_token(me(f"Bearer {token}"))
    with pytest.raises(tokens.InvalidAccessToken):
        tokens.access_token_decode(token)


def test_token_with_a_tampered_payload_is_rejected(session):
    header, _, signature = mint(session).split(".")
    forged = b64url(json.dumps(claims_for(session, exp=_now() + 10 * 365 * 86400)).encode())
    assert_invalid_token(me(f"Bearer {header}.{forged}.{signature}"))


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_other_hmac_algorithms_are_not_on_the_allowlist(session, alg):
    token = jwt.encode(claims_for(session), tokens.jwt_key(), algorithm=alg)
    assert jwt.get_unverified_header(token)["alg"] == alg
    assert_invalid_token(me(f"Bearer {token}"))
    with pytest.raises(tokens.InvalidAccessToken):
        tokens.access_token_decode(token)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256", "EdDSA"])
def test_asymmetric_alg_headers_are_rejected_even_when_hmac_signed_with_our_key(session, alg):
    # The classic key-confusion attack: claim an asymmetric algorithm, sign with HMAC.
    token = hand_signed({"alg": alg, "typ": "JWT"}, claims_for(session), tokens.jwt_key())
    assert_invalid_token(me(f"Bearer {token}"))
    with pytest.raises(tokens.InvalidAccessToken):
        tokens.access_token_decode(token)


def test_hand_signed_hs256_baseline_is_accepted(session):
    # Proves hand_signed() builds a valid token, so the rejections above are about `alg`.
    token = hand_signed({"alg": "HS256", "typ": "JWT"}, claims_for(session), tokens.jwt_key())
    assert me(f"Bearer {token}").status_code == 200


def test_a_refresh_token_is_not_an_access_token(user, login):
    body = login(user)
    assert_invalid_token(me(f"Bearer {body['refresh_token']}"))


# --- the Authorization header ----------------------------------------------------------


def test_no_authorization_header_is_a_401_not_authenticated():
    response = me(None)
    assert response.status_code == 401
    assert response.json()["error"] == "not_authenticated"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Basic xyz", "Basic dXNlcjpwYXNz", "Token abc", "", "   "])
def test_non_bearer_authorization_is_a_401_not_authenticated(header):
    response = me(header)
    assert response.status_code == 401
    assert response.json()["error"] == "not_authenticated"


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Bearer a b", "Bearer a.b.c extra"])
def test_malformed_bearer_header_is_a_401(header):
    assert_invalid_token(me(header))


def test_malformed_bearer_header_with_a_valid_token_inside_is_still_rejected(session):
    assert_invalid_token(me(f"Bearer {mint(session)} trailing"))


@pytest.mark.parametrize(
    "raw_token",
    ["tökén", "token-with-emoji-😀", "é.é.é", "\u00a0"],
    ids=["latin", "emoji", "dotted", "nbsp"],
)
def test_non_ascii_bytes_in_the_header_are_a_401_not_a_500(raw_token):
    # A WSGI server hands header bytes to Django decoded as latin-1.
    header = "Bearer " + raw_token.encode("utf-8").decode("latin-1")
    response = me(header)
    assert response.status_code == 401
    assert response.json()["error"] in {"invalid_token", "not_authenticated"}


def test_non_ascii_bytes_appended_to_a_valid_token_are_a_401(session):
    header = "Bearer " + (mint(session) + "é").encode("utf-8").decode("latin-1")
    assert_invalid_token(me(header))


def test_access_token_decode_rejects_non_ascii_and_garbage():
    for value in ["tökén", "", "a.b.c", "....", "eyJ" * 200]:
        with pytest.raises(tokens.InvalidAccessToken):
            tokens.access_token_decode(value)


# --- the user and the session behind the token ------------------------------------------


def test_a_token_for_a_deleted_user_is_a_401(user, login):
    body = login(user)
    assert me(f"Bearer {body['access_token']}").status_code == 200  # warm any cache
    User.objects.get(pk=user.pk).delete()
    assert_invalid_token(me(f"Bearer {body['access_token']}"))


def test_a_minted_token_for_a_user_that_never_existed_is_a_401(session):
    token = mint(session, sub=str(uuid.uuid4()), sid=str(uuid.uuid4()))
    assert_invalid_token(me(f"Bearer {token}"))


def test_a_token_for_an_expired_session_is_a_401(session):
    Session.objects.filter(pk=session.pk).update(expires_at=datetime(2000, 1, 1, tzinfo=UTC))
    assert_invalid_token(me(f"Bearer {mint(session)}"))


# --- refresh tokens -----------------------------------------------------------------------


def test_refresh_tokens_carry_at_least_256_bits():
    drawn = [tokens.refresh_token_new() for _ in range(1000)]
    assert all(len(token) >= 43 for token in drawn)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", token) for token in drawn)
    assert len(set(drawn)) == 1000
    # 43 base64url characters hold 258 bits; the decoded value is 32 bytes.
    assert all(len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) >= 32 for token in drawn)


def test_refresh_token_hash_is_hex_sha256():
    raw = tokens.refresh_token_new()
    assert tokens.refresh_token_hash(raw) == hashlib.sha256(raw.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", tokens.refresh_token_hash(raw))


def test_refresh_token_successor_is_deterministic_distinct_and_long():
    parent = tokens.refresh_token_new()
    successor = tokens.refresh_token_successor(parent)
    assert successor == tokens.refresh_token_successor(parent)
    assert successor != parent
    assert len(successor) >= 43
    assert tokens.refresh_token_successor(tokens.refresh_token_new()) != successor
