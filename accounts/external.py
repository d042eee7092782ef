"""The providers a user may sign in with: configuration, and the OAuth / OIDC calls.

Everything protocol-shaped is authlib's (the authorization URL with state, nonce
and PKCE; the code exchange; the ID token's claims checks) on joserfc's JWS and
JWK: nothing here signs, hashes or verifies by hand. Two kinds:

- "oidc": any OpenID Connect issuer (Google, OIDC_PROVIDERS): discovery document,
  ID token verified against the issuer's JWKS (iss, aud = our client id, exp,
  nonce, at_hash when an access token came with it);
- "github": GitHub's OAuth 2.0 (no ID token): the token, then GET /user and
  /user/emails of its REST API (the API base is configurable).

Discovery documents and key sets are cached per process for an hour; an ID
token signed by a key not in the cached set refetches the set once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oidc.core import CodeIDToken, IDToken
from django.conf import settings
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from velro.errors import ApiError

CACHE_SECONDS = 3600
LEEWAY_SECONDS = 60
# Never HMAC with the client secret nor "none": an ID token is signed with the issuer's key.
ASYMMETRIC = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}


class ExternalError(ApiError):
    """A provider sign-in that cannot go on; codes are GoTrue's (accounts/gotrue/errors.py keeps them)."""

    status = 400


class ProviderNotFound(ExternalError):
    code = "validation_failed"

    def __init__(self, name: str) -> None:
        super().__init__(f"Unsupported provider: Provider {name} could not be found")


class ProviderUnavailable(ExternalError):
    """The provider did not answer, or answered what cannot be used."""

    status = 502
    code = "unexpected_failure"
    detail = "Error contacting the external provider"


class BadIdToken(ExternalError):
    code = "bad_oauth_callback"
    detail = "Bad ID token"


@dataclass(frozen=True)
class Provider:
    name: str
    kind: str  # oidc | github
    client_id: str
    client_secret: str
    scopes: tuple[str, ...]
    redirect_uri: str
    issuer: str = ""
    url: str = ""
    api_url: str = ""


@dataclass(frozen=True)
class ProviderUser:
    """What the provider asserts about the user, as GoTrue's identity_data holds it."""

    subject: str
    email: str
    email_verified: bool
    claims: dict[str, Any] = field(default_factory=dict)
    access_token: str = ""
    refresh_token: str = ""


def providers_enabled() -> list[str]:
    return sorted(settings.EXTERNAL_PROVIDERS)


def provider_get(name: str) -> Provider:
    config = settings.EXTERNAL_PROVIDERS.get(name or "")
    if config is None:
        raise ProviderNotFound(name)
    return Provider(
        name=name,
        kind=config["kind"],
        client_id=config["client_id"],
        client_secret=config["client_secret"],
        scopes=tuple(config["scopes"]),
        redirect_uri=config["redirect_uri"],
        issuer=config.get("issuer", ""),
        url=config.get("url", ""),
        api_url=config.get("api_url", ""),
    )


# --- HTTP, discovery, keys ----------------------------------------------------------------

_cache: dict[str, tuple[float, Any]] = {}
_cache_lock = threading.Lock()


def _get_json(url: str, **kwargs: Any) -> Any:
    try:
        response = requests.get(url, timeout=settings.EXTERNAL_HTTP_TIMEOUT, **kwargs)
        response.raise_for_status()
        return response.json()
    except (requests.RequestException, ValueError):
        raise ProviderUnavailable() from None


def _cached(url: str, *, refresh: bool = False) -> Any:
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(url)
    if hit is not None and not refresh and now - hit[0] < CACHE_SECONDS:
        return hit[1]
    value = _get_json(url)
    with _cache_lock:
        _cache[url] = (now, value)
    return value


def cache_clear() -> None:
    with _cache_lock:
        _cache.clear()


def _metadata(provider: Provider) -> dict:
    document = _cached(f"{provider.issuer}/.well-known/openid-configuration")
    if not isinstance(document, dict) or document.get("issuer", "").rstrip("/") != provider.issuer:
        raise ProviderUnavailable("The provider's discovery document names another issuer")
    return document


def _endpoints(provider: Provider) -> tuple[str, str]:
    """(authorization endpoint, token endpoint)."""
    if provider.kind == "github":
        return f"{provider.url}/login/oauth/authorize", f"{provider.url}/login/oauth/access_token"
    document = _metadata(provider)
    return document["authorization_endpoint"], document["token_endpoint"]


def _session(provider: Provider, scopes: tuple[str, ...] = ()) -> OAuth2Session:
    return OAuth2Session(
        client_id=provider.client_id,
        client_secret=provider.client_secret,
        scope=" ".join(dict.fromkeys((*provider.scopes, *scopes))),
        redirect_uri=provider.redirect_uri,
        code_challenge_method="S256",
    )


# --- the round trip ----------------------------------------------------------------------


def authorization_url(
    *, provider: Provider, state: str, nonce: str, code_verifier: str, scopes: tuple[str, ...] = ()
) -> str:
    """Where the browser goes to sign in at the provider (state, nonce, PKCE S256)."""
    endpoint, _ = _endpoints(provider)
    extra = {"nonce": nonce} if provider.kind == "oidc" else {}
    with _session(provider, scopes) as session:
        url, _ = session.create_authorization_url(endpoint, state=state, code_verifier=code_verifier, **extra)
    return url


def code_exchange(*, provider: Provider, code: str, code_verifier: str, nonce: str) -> ProviderUser:
    """The callback's code -> tokens -> who the user is (ID token, or GitHub's API)."""
    _, endpoint = _endpoints(provider)
    with _session(provider) as session:
        try:
            token = session.fetch_token(
                endpoint,
                code=code,
                code_verifier=code_verifier,
                headers={"Accept": "application/json"},
                timeout=settings.EXTERNAL_HTTP_TIMEOUT,
            )
        except (requests.RequestException, ValueError) as exc:
            raise ProviderUnavailable() from exc
        except Exception as exc:  # authlib's OAuthError: the provider refused the code
            raise ExternalError("Unable to exchange external code", code="bad_oauth_callback") from exc
    access_token = token.get("access_token") or ""
    if not access_token:
        raise ExternalError("Unable to exchange external code", code="bad_oauth_callback")
    refresh_token = token.get("refresh_token") or ""
    if provider.kind == "github":
        user = _github_user(provider, access_token)
    else:
        if not token.get("id_token"):
            raise BadIdToken()
        claims = id_token_claims(provider=provider, id_token=token["id_token"], nonce=nonce, access_token=access_token)
        user = _oidc_user(claims)
    return dataclasses.replace(user, access_token=access_token, refresh_token=refresh_token)


def id_token_claims(*, provider: Provider, id_token: str, nonce: str | None, access_token: str = "") -> dict:
    """The verified claims of an ID token the provider issued to our client:
    signature (the issuer's JWKS), iss, aud (our client id), exp/iat, nonce (equal
    to `nonce` when given; absent when None), at_hash when an access token is given.
    BadIdToken for anything else."""
    if provider.kind != "oidc":
        raise ExternalError(f"Provider {provider.name} is not an OIDC provider", code="validation_failed")
    document = _metadata(provider)
    algorithms = [
        alg for alg in document.get("id_token_signing_alg_values_supported") or ["RS256"] if alg in ASYMMETRIC
    ]
    registry = JWSRegistry(algorithms=algorithms or ["RS256"], strict_check_header=False)
    try:
        try:
            token = jwt.decode(id_token, KeySet.import_key_set(_cached(document["jwks_uri"])), registry=registry)
        except InvalidKeyIdError:  # the issuer rotated its keys: refetch once
            token = jwt.decode(
                id_token, KeySet.import_key_set(_cached(document["jwks_uri"], refresh=True)), registry=registry
            )
        params = {"client_id": provider.client_id}
        if nonce is not None:
            params["nonce"] = nonce
        claims_cls = IDToken
        if access_token:
            params["access_token"] = access_token
            claims_cls = CodeIDToken
        claims = claims_cls(token.claims, token.header, {"iss": {"values": [provider.issuer]}}, params)
        claims.validate(leeway=LEEWAY_SECONDS)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise BadIdToken() from exc
    if nonce is None and claims.get("nonce"):
        raise BadIdToken("Passed nonce and nonce in id_token should either both exist or not.")
    if not claims.get("sub"):
        raise BadIdToken("Missing sub claim in id_token")
    return dict(claims)


def nonce_hash(raw: str) -> str:
    """GoTrue's signInWithIdToken nonce: the ID token carries sha256(raw) in hex."""
    return hashlib.sha256(raw.encode()).hexdigest()


def _oidc_user(claims: dict) -> ProviderUser:
    email = claims.get("email") if isinstance(claims.get("email"), str) else ""
    verified = claims.get("email_verified") in (True, "true")
    identity_data = {
        key: value for key, value in claims.items() if key not in ("aud", "exp", "iat", "nonce", "at_hash", "azp")
    }
    identity_data.update({"sub": str(claims["sub"]), "email": email, "email_verified": verified})
    if claims.get("iss"):
        identity_data["iss"] = claims["iss"]
    return ProviderUser(subject=str(claims["sub"]), email=email.lower(), email_verified=verified, claims=identity_data)


def _github_user(provider: Provider, access_token: str) -> ProviderUser:
    headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/vnd.github+json"}
    user = _get_json(f"{provider.api_url}/user", headers=headers)
    emails = _get_json(f"{provider.api_url}/user/emails", headers=headers)
    if not isinstance(user, dict) or user.get("id") is None or not isinstance(emails, list):
        raise ProviderUnavailable()
    # GoTrue's choice: the primary address, else the last listed.
    chosen = next((item for item in emails if isinstance(item, dict) and item.get("primary")), None)
    if chosen is None and emails and isinstance(emails[-1], dict):
        chosen = emails[-1]
    email = str((chosen or {}).get("email") or "")
    verified = bool((chosen or {}).get("verified"))
    subject = str(user["id"])
    claims = {
        "iss": provider.api_url,
        "sub": subject,
        "provider_id": subject,
        "email": email,
        "email_verified": verified,
        "user_name": user.get("login") or "",
        "preferred_username": user.get("login") or "",
        "name": user.get("name") or "",
        "full_name": user.get("name") or "",
        "avatar_url": user.get("avatar_url") or "",
        "phone_verified": False,
    }
    return ProviderUser(subject=subject, email=email.lower(), email_verified=verified, claims=claims)
