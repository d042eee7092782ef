"""Helpers the account tests share (one copy, not one per file)."""

from __future__ import annotations

import jwt
from rest_framework.test import APIClient

from accounts import signing, tokens
from accounts.tests.factories import DEFAULT_PASSWORD

LOGIN = "/api/v1/auth/login"


def bearer(access_token: str) -> APIClient:
    """An APIClient sending `Authorization: Bearer <access_token>`."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token}")
    return client


def api_login(email: str, password: str = DEFAULT_PASSWORD) -> dict:
    """POST /login through the API; the token body (asserts it succeeded)."""
    response = APIClient().post(LOGIN, {"email": email, "password": password}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


class Clock:
    """A hand-driven clock (monotonic seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sign_token(claims: dict, *, hs256_key: bytes | str | None = None) -> str:
    """A JWT signed as the server signs access tokens now (the active key, its
    `kid` in the header); with `hs256_key`, an HS256 token without a kid, as
    signed before the asymmetric keys (the legacy secrets, or an attacker's key)."""
    if hs256_key is not None:
        return jwt.encode(claims, hs256_key, algorithm="HS256")
    return tokens.jwt_sign(claims)


def token_claims(token: str, *, audience: str) -> dict:
    """The claims of an access token of either surface, verified as a downstream
    service does: with the public key its `kid` names in the JWKS, and that
    key's algorithm only."""
    published = {jwk["kid"]: jwk for jwk in signing.keys.jwks()["keys"]}
    jwk = published[jwt.get_unverified_header(token)["kid"]]
    return jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=[jwk["alg"]], audience=audience)


def signing_keys_warm() -> None:
    """Load this process's signing keys (creating the first active key): what a
    running node holds between reloads, so a query budget measures the request."""
    signing.keys.signer()
