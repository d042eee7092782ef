"""Sign in with a provider, and the identities that result: the flow for both surfaces.

GET /authorize -> flow_start: a flow state row (random `state`, only its hash kept;
the nonce and the PKCE verifier towards the provider), then the provider's page.
GET /callback -> callback_complete: the row claimed once (conditional UPDATE),
the code exchanged (accounts.external), the account found or made
(identity_resolve), then either a session (implicit flow) or an auth code for
/token?grant_type=pkce (the client sent a code_challenge), claimed once too.

Which account a provider sign-in reaches (GoTrue's DetermineAccountLinking, with
one deviation, see identity_resolve):
1. the account that already holds this (provider, subject) identity;
2. linkIdentity: the signed-in user who started the flow;
3. the account with the same address, when the provider says the address is
   verified (linked: a new identity on that account). If that account's address
   was never confirmed, its password is removed first (GoTrue's guard against a
   pre-registered account being taken over) and the address becomes confirmed;
4. a new, passwordless account (confirmed when the provider verified the address).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.base_user import BaseUserManager
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone

from accounts import external, mfa, onetime, selectors, services
from accounts.events import user_signed_up
from accounts.external import ExternalError, Provider, ProviderUser
from accounts.models import NO_EMAIL_DOMAIN, ExternalFlowState, Identity, User
from accounts.services import IssuedTokens
from accounts.tokens import secret_digest
from monitoring import audit
from monitoring.models import AuditEvent
from velro.errors import ApiError
from velro.net import client_ip, user_agent

EMAIL_PROVIDER = "email"
OAUTH_METHOD = "oauth"  # GoTrue's amr method for a provider sign-in


class IdentityAlreadyExists(ApiError):
    status = 422
    code = "identity_already_exists"
    detail = "Identity is already linked to another user"


class IdentityNotFound(ApiError):
    status = 422
    code = "identity_not_found"
    detail = "Identity doesn't exist"


class SingleIdentityNotDeletable(ApiError):
    status = 422
    code = "single_identity_not_deletable"
    detail = "User must have at least 1 identity after unlinking"


class BadOAuthState(ApiError):
    status = 400
    code = "bad_oauth_state"
    detail = "OAuth callback with invalid state"


class ProviderEmailMissing(ApiError):
    status = 422
    code = "provider_email_needs_verification"
    detail = "Error getting user email from external provider"


class UnverifiedEmailTaken(ApiError):
    """The provider's address is not verified and another account has it: not linked
    (anyone can claim any address at some providers), not a second account either."""

    status = 422
    code = "email_exists"
    detail = (
        "A user with this email address has already been registered; the provider did not verify it, "
        "so it cannot be linked: sign in to that account and link the provider from there"
    )


class AccountUnavailable(ApiError):
    status = 403
    code = "user_banned"
    detail = "User is banned"


IDENTITY_ERRORS = (
    ExternalError,
    IdentityAlreadyExists,
    IdentityNotFound,
    SingleIdentityNotDeletable,
    BadOAuthState,
    ProviderEmailMissing,
    UnverifiedEmailTaken,
    AccountUnavailable,
)


# --- what a user has ----------------------------------------------------------------------


def email_identity_id(user: User) -> uuid.UUID:
    """The derived email identity's id (stable: not stored, see identities_of)."""
    return uuid.uuid5(user.pk, EMAIL_PROVIDER)


def _may_have_stored(user: User) -> bool:
    # Only accounts a provider sign-in, a link or an import touched have rows, and
    # those list their providers in app_metadata: the rest cost no query.
    providers = (user.app_metadata or {}).get("providers") or []
    return any(provider != EMAIL_PROVIDER for provider in providers) or EMAIL_PROVIDER in providers[1:]


def stored_identities(user: User) -> list[Identity]:
    """The user's identity rows (the prefetch cache when present)."""
    if not _may_have_stored(user) and "identities" not in getattr(user, "_prefetched_objects_cache", {}):
        return []
    # The email identity first (as the derived one), then by age.
    return sorted(
        user.identities.all(),
        key=lambda identity: (identity.provider != EMAIL_PROVIDER, identity.created_at, str(identity.pk)),
    )


def has_email_identity(user: User, stored: list[Identity]) -> bool:
    """The derived email identity: a real address, no stored email row, and either a
    usable password or no provider identity at all (a password or email-code user)."""
    if user.email.endswith(f"@{NO_EMAIL_DOMAIN}"):
        return False
    if any(identity.provider == EMAIL_PROVIDER for identity in stored):
        return False
    return user.has_usable_password() or not stored


def _providers(user: User, stored: list[Identity]) -> list[str]:
    names = [EMAIL_PROVIDER] if has_email_identity(user, stored) else []
    return list(dict.fromkeys([*names, *(identity.provider for identity in stored)]))


def _providers_update(user: User) -> None:
    """app_metadata.providers from the identities (GoTrue's UpdateAppMetaDataProviders);
    `provider` (the first one) is kept once set."""
    user.refresh_from_db(fields=["app_metadata", "password"])
    stored = list(Identity.objects.filter(user=user).order_by("created_at"))
    metadata = dict(user.app_metadata or {})
    providers = _providers(user, stored)
    metadata.setdefault("provider", providers[0] if providers else EMAIL_PROVIDER)
    metadata["providers"] = providers
    user.app_metadata = metadata
    user.updated_at = timezone.now()
    user.save(update_fields=["app_metadata", "updated_at"])


# --- the round trip -----------------------------------------------------------------------


def flow_start(
    *,
    provider_name: str,
    redirect_to: str,
    code_challenge: str = "",
    code_challenge_method: str = "",
    link_user: User | None = None,
    scopes: str = "",
    surface: str = "gotrue",
) -> str:
    """A new flow state and the provider URL the browser is sent to."""
    provider = external.provider_get(provider_name)
    problem = onetime.pkce_challenge_valid(code_challenge=code_challenge, code_challenge_method=code_challenge_method)
    if problem:
        raise ExternalError(problem, code="validation_failed")
    state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    url = external.authorization_url(
        provider=provider, state=state, nonce=nonce, code_verifier=verifier, scopes=tuple(scopes.split())
    )
    ExternalFlowState.objects.create(
        state_hash=secret_digest(state),
        provider=provider.name,
        surface=surface,
        nonce=nonce,
        provider_code_verifier=verifier,
        redirect_to=redirect_to,
        code_challenge=code_challenge,
        code_challenge_method=code_challenge_method.lower() if code_challenge else "",
        link_user=link_user,
    )
    return url


def flow_find(*, state: str) -> ExternalFlowState | None:
    """The flow a callback's state names (not claimed yet): for where to send errors."""
    if not state:
        return None
    return ExternalFlowState.objects.filter(state_hash=secret_digest(state)).first()


def _flow_claim(flow: ExternalFlowState | None) -> ExternalFlowState:
    now = timezone.now()
    if flow is None:
        raise BadOAuthState()
    if now - flow.created_at > timedelta(seconds=settings.GOTRUE_FLOW_STATE_EXPIRY):
        raise onetime.FlowStateExpired()
    claimed = ExternalFlowState.objects.filter(pk=flow.pk, used_at__isnull=True).update(used_at=now)
    if claimed != 1:
        raise BadOAuthState("OAuth state has already been used")
    flow.used_at = now
    return flow


def flow_cancel(*, flow: ExternalFlowState) -> None:
    """The provider answered with an error: the flow is spent."""
    ExternalFlowState.objects.filter(pk=flow.pk, used_at__isnull=True).update(used_at=timezone.now())


@dataclass(frozen=True)
class CallbackResult:
    flow: ExternalFlowState
    user: User
    provider_user: ProviderUser
    tokens: IssuedTokens | None = None  # the implicit flow
    auth_code: str = ""  # the PKCE flow (the client sent a code_challenge)


def callback_complete(*, request: HttpRequest, flow: ExternalFlowState | None, code: str) -> CallbackResult:
    """The provider sent the browser back with `code`: claim the flow, exchange the
    code, find or make the account, then a session or a PKCE auth code."""
    flow = _flow_claim(flow)
    if not code:
        raise ExternalError("OAuth callback without a code", code="bad_oauth_callback")
    provider = external.provider_get(flow.provider)
    provider_user = external.code_exchange(
        provider=provider, code=code, code_verifier=flow.provider_code_verifier, nonce=flow.nonce
    )
    user = identity_resolve(request=request, provider=provider, provider_user=provider_user, link_user=flow.link_user)
    if flow.code_challenge or flow.surface == "native":
        auth_code = str(uuid.uuid4()) + secrets.token_hex(8)
        ExternalFlowState.objects.filter(pk=flow.pk).update(
            user=user, auth_code_hash=secret_digest(auth_code), auth_code_issued_at=timezone.now()
        )
        return CallbackResult(flow=flow, user=user, provider_user=provider_user, auth_code=auth_code)
    tokens = _session(request=request, user=user, provider=provider.name, surface=flow.surface)
    return CallbackResult(flow=flow, user=user, provider_user=provider_user, tokens=tokens)


def _session(*, request: HttpRequest, user: User, provider: str, surface: str, method: str = "oauth") -> IssuedTokens:
    tokens = services.session_login(
        user=user, ip=client_ip(request), user_agent=user_agent(request), method=OAUTH_METHOD
    )
    audit.record(
        AuditEvent.Kind.LOGIN_SUCCESS,
        request,
        user_id=user.pk,
        session=tokens.session_id,
        method=method,
        provider=provider,
        surface=surface,
    )
    return tokens


def pkce_exchange(*, request: HttpRequest, auth_code: str, code_verifier: str, surface: str) -> IssuedTokens:
    """/token?grant_type=pkce for a provider flow: the auth code and its verifier, once."""
    now = timezone.now()
    flow = (
        ExternalFlowState.objects.select_related("user")
        .filter(auth_code_hash=secret_digest(auth_code), auth_code_used_at__isnull=True)
        .first()
    )
    if flow is None or flow.user is None or flow.auth_code_issued_at is None:
        raise onetime.FlowStateNotFound()
    if now - flow.auth_code_issued_at > timedelta(seconds=settings.GOTRUE_FLOW_STATE_EXPIRY):
        raise onetime.FlowStateExpired()
    if not flow.code_challenge or not onetime.pkce_verifier_matches(
        code_challenge=flow.code_challenge, method=flow.code_challenge_method, verifier=code_verifier
    ):
        raise onetime.BadCodeVerifier()
    if ExternalFlowState.objects.filter(pk=flow.pk, auth_code_used_at__isnull=True).update(auth_code_used_at=now) != 1:
        raise onetime.FlowStateNotFound()
    _usable(flow.user)
    return _session(request=request, user=flow.user, provider=flow.provider, surface=surface, method="pkce_oauth")


def id_token_sign_in(
    *,
    request: HttpRequest,
    provider_name: str,
    id_token: str,
    nonce: str = "",
    access_token: str = "",
    link_user: User | None = None,
    surface: str = "gotrue",
) -> IssuedTokens:
    """signInWithIdToken: an ID token the provider issued to our client id (a native
    app's Google / OIDC sign-in), verified against the provider's keys; `nonce` is
    the raw nonce whose SHA-256 (hex) the token carries, as GoTrue checks it."""
    provider = external.provider_get(provider_name)
    claims = external.id_token_claims(
        provider=provider,
        id_token=id_token,
        nonce=external.nonce_hash(nonce) if nonce else None,
        access_token=access_token,
    )
    provider_user = external._oidc_user(claims)
    user = identity_resolve(request=request, provider=provider, provider_user=provider_user, link_user=link_user)
    return _session(request=request, user=user, provider=provider.name, surface=surface, method="id_token")


# --- which account ---------------------------------------------------------------------------


def _usable(user: User) -> None:
    if not user.is_active or user.deleted_at is not None or user.is_banned():
        raise AccountUnavailable()


def _identity_create(*, user: User, provider: Provider, provider_user: ProviderUser) -> Identity:
    now = timezone.now()
    try:
        with transaction.atomic():
            return Identity.objects.create(
                user=user,
                provider=provider.name,
                provider_id=provider_user.subject,
                identity_data=provider_user.claims,
                email=provider_user.email,
                created_at=now,
                updated_at=now,
                last_sign_in_at=now,
            )
    except IntegrityError:
        raise IdentityAlreadyExists() from None


def _audit_identity(request: HttpRequest, kind: str, identity: Identity, **detail: object) -> None:
    audit.record(
        kind,
        request,
        user_id=identity.user_id,
        identity_id=str(identity.pk),
        provider=identity.provider,
        provider_id=identity.provider_id,
        **detail,
    )


def identity_resolve(
    *, request: HttpRequest, provider: Provider, provider_user: ProviderUser, link_user: User | None = None
) -> User:
    """The account this provider sign-in reaches (the module's docstring), the identity
    stored or refreshed, app_metadata.providers kept in step.

    Deviation from GoTrue: an address the provider did not verify that another
    account already has is refused (UnverifiedEmailTaken, 422 email_exists).
    GoTrue makes a second account without an address then, which its users
    rarely expect; here the owner signs in and links the provider instead."""
    existing = (
        Identity.objects.select_related("user")
        .filter(provider=provider.name, provider_id=provider_user.subject)
        .first()
    )
    if link_user is not None:
        if existing is not None:
            raise IdentityAlreadyExists(
                "Identity is already linked" if existing.user_id == link_user.pk else IdentityAlreadyExists.detail
            )
        _usable(link_user)
        with transaction.atomic():
            identity = _identity_create(user=link_user, provider=provider, provider_user=provider_user)
            _providers_update(link_user)
        _audit_identity(request, AuditEvent.Kind.IDENTITY_LINKED, identity, link="manual")
        return link_user
    if existing is not None:
        _usable(existing.user)
        Identity.objects.filter(pk=existing.pk).update(
            identity_data=provider_user.claims,
            email=provider_user.email,
            updated_at=timezone.now(),
            last_sign_in_at=timezone.now(),
        )
        return existing.user
    if not provider_user.email:
        raise ProviderEmailMissing()
    owner = selectors.user_for_login(email=provider_user.email)
    if owner is not None:
        if not provider_user.email_verified:
            raise UnverifiedEmailTaken()
        return _link_by_email(request=request, owner=owner, provider=provider, provider_user=provider_user)
    return _user_create(request=request, provider=provider, provider_user=provider_user)


def _link_by_email(*, request: HttpRequest, owner: User, provider: Provider, provider_user: ProviderUser) -> User:
    _usable(owner)
    with transaction.atomic():
        if owner.email_confirmed_at is None:
            # Whoever registered this address never proved it: the provider just did.
            # Their password goes (GoTrue's RemoveUnconfirmedIdentities), so a
            # pre-registered account cannot be used to watch the real owner's.
            owner.set_unusable_password()
            owner.email_confirmed_at = timezone.now()
            owner.save(update_fields=["password", "email_confirmed_at"])
            services.user_sessions_end(user_id=owner.pk, reason="identity_linked")
        identity = _identity_create(user=owner, provider=provider, provider_user=provider_user)
        _providers_update(owner)
    _audit_identity(request, AuditEvent.Kind.IDENTITY_LINKED, identity, link="verified_email")
    return owner


def _user_create(*, request: HttpRequest, provider: Provider, provider_user: ProviderUser) -> User:
    """A new account made by the provider: no password, the address confirmed when
    the provider verified it, GoTrue's app_metadata and user_metadata (the claims)."""
    now = timezone.now()
    claims = provider_user.claims
    name = next((claims.get(key) for key in ("full_name", "name") if isinstance(claims.get(key), str)), "") or ""
    user = User(
        email=BaseUserManager.normalize_email(provider_user.email),
        display_name="".join(char for char in name.strip() if char.isprintable())[:100],
        user_metadata=dict(claims),
        app_metadata={"provider": provider.name, "providers": [provider.name]},
        date_joined=now,
        email_confirmed_at=now if provider_user.email_verified else None,
    )
    user.set_unusable_password()
    try:
        with transaction.atomic():
            user.save(force_insert=True)
            user_signed_up.send(sender=User, user=user, referral_code=None, now=now)
            identity = _identity_create(user=user, provider=provider, provider_user=provider_user)
    except IntegrityError:
        # The address was taken meanwhile (or the identity made by a racing callback): start again once.
        raise IdentityAlreadyExists("Identity is already linked") from None
    audit.record(AuditEvent.Kind.SIGNUP, request, user_id=user.pk, provider=provider.name)
    _audit_identity(request, AuditEvent.Kind.IDENTITY_LINKED, identity, link="signup")
    return user


# --- unlinking -------------------------------------------------------------------------------


def identity_unlink(*, request: HttpRequest, user: User, identity_id: uuid.UUID, session_id: uuid.UUID | None) -> None:
    """DELETE /user/identities/{id}: never the last way in (GoTrue's
    single_identity_not_deletable). The email identity counts only while it can
    sign in (a usable password, or a confirmed address for email codes);
    unlinking it removes the password (the address stays the account's). It
    removes a way to sign in: aal2 when the user has a second factor (accounts.mfa)."""
    mfa.aal_require(user_id=user.pk, session_id=session_id)
    user = User.objects.get(pk=user.pk)
    stored = list(Identity.objects.filter(user=user).order_by("created_at"))
    email_usable = has_email_identity(user, stored) and (
        user.has_usable_password() or user.email_confirmed_at is not None
    )
    if len(stored) + (1 if email_usable else 0) <= 1:
        raise SingleIdentityNotDeletable()
    target = next((identity for identity in stored if identity.pk == identity_id), None)
    with transaction.atomic():
        if target is None:
            if not (email_usable and identity_id == email_identity_id(user)):
                raise IdentityNotFound()
            target = Identity(
                id=identity_id, user=user, provider=EMAIL_PROVIDER, provider_id=str(user.pk), email=user.email
            )
            user.set_unusable_password()
            user.save(update_fields=["password"])
        else:
            Identity.objects.filter(pk=target.pk).delete()
            if target.provider == EMAIL_PROVIDER:
                user.set_unusable_password()
                user.save(update_fields=["password"])
        _providers_update(user)
    _audit_identity(request, AuditEvent.Kind.IDENTITY_UNLINKED, target)


def flow_states_prune(*, now: datetime | None = None, older_than: timedelta = timedelta(days=1)) -> int:
    """Delete provider round trips started more than `older_than` ago (beat, hourly, with
    the one-time tokens): far past GOTRUE_FLOW_STATE_EXPIRY, used or abandoned alike."""
    now = now or timezone.now()
    deleted, _ = ExternalFlowState.objects.filter(created_at__lt=now - older_than).delete()
    return deleted
