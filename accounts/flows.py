"""What an auth operation does, in order, for both API surfaces.

admission -> throttle -> service -> audit -> result. The native views
(accounts.views) and the GoTrue views (accounts.gotrue.views) call these and
differ only in their serializers and error mapping, so a rule added here holds
on both (and on the Django admin's sign-in, accounts.backends).

Admission (velro.admission): a login whose client has already gone, or that
waited longer than HASH_MAX_REQUEST_AGE_MS, is shed (503 `overloaded`) before
the rate limits and the user read; the verify itself then holds a
password-hashing slot (services.user_authenticate), checked again once the
slot is had. A shed login verifies nothing and writes nothing: no session for
a client that is not there to receive it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from accounts import identities, mfa, onetime, recovery, recovery_flows, selectors, services, throttles
from accounts.models import OneTimeToken, User
from accounts.models import OneTimeTokenPurpose as Purpose
from accounts.services import IssuedTokens
from monitoring import audit
from monitoring.models import AuditEvent
from velro import admission
from velro.errors import ApiError, InvalidCredentials, Overloaded, RefreshTokenReused
from velro.net import client_ip, user_agent


def _authenticate(
    *, request: HttpRequest, password: str, email: str | None, username: str | None, surface: str
) -> tuple[User, str]:
    """Admission, rate limits (per address; per account, owner-safe), one user
    read, one argon2id verify; a failure is audited. Returns (user, account key)."""
    admission.admit(request)
    ip = client_ip(request)
    identifier = email if email is not None else (username or "")
    throttles.login_ip_guard(ip=ip)
    user = selectors.user_for_login(email=email, username=username)
    account = throttles.login_account(user_id=user.pk if user else None, identifier=identifier)
    throttles.login_account_guard(
        ip=ip,
        account=account,
        known_source=lambda: user is not None and selectors.user_signed_in_from(user_id=user.pk, ip=ip),
    )
    try:
        return services.user_authenticate(user=user, password=password, request=request), account
    except InvalidCredentials as exc:
        banned = {"reason": "banned"} if isinstance(exc, services.UserBanned) else {}
        audit.record(
            AuditEvent.Kind.LOGIN_FAILURE, request, identifier=identifier, **banned, **audit.surface_detail(surface)
        )
        raise
    except Overloaded:
        # Shed before any verify: no guess was spent, so the failure counted
        # in advance by login_account_guard is handed back (else an overload
        # would lock owners out of their accounts).
        throttles.login_succeeded(ip=ip, account=account)
        raise


def _still_connected(*, request: HttpRequest, account: str) -> None:
    """After a right password: shed (Overloaded) if the client left during the
    verify, so no session is made for nobody; the failure counted in advance is
    handed back (the password was right)."""
    try:
        admission.ensure_client(request)
    except Overloaded:
        throttles.login_succeeded(ip=client_ip(request), account=account)
        raise


def password_login(
    *,
    request: HttpRequest,
    password: str,
    email: str | None = None,
    username: str | None = None,
    surface: str = "native",
) -> IssuedTokens:
    """Sign in with a password: the checks above, then (the client still
    connected) the session insert."""
    user, account = _authenticate(request=request, password=password, email=email, username=username, surface=surface)
    _still_connected(request=request, account=account)
    if user.email_confirmed_at is None:
        # An address never confirmed (a signup in confirmation-required mode,
        # an imported unconfirmed user, an admin-created one without
        # email_confirm), as GoTrue whatever GOTRUE_MAILER_AUTOCONFIRM says.
        # After the right password only (a wrong one is invalid_credentials
        # whatever the state), so this tells nothing to whoever does not know
        # the password.
        throttles.login_succeeded(ip=client_ip(request), account=account)
        raise onetime.EmailNotConfirmed(status=400, detail="Email not confirmed")
    tokens = services.session_login(user=user, ip=client_ip(request), user_agent=user_agent(request))
    throttles.login_succeeded(ip=client_ip(request), account=account)
    audit.record(
        AuditEvent.Kind.LOGIN_SUCCESS,
        request,
        user_id=user.pk,
        session=tokens.session_id,
        **audit.surface_detail(surface),
    )
    return tokens


class AdminSecondFactorRequired(ApiError):
    """The admin sign-in of a user with a second factor, without a code (the password was right)."""

    status = 401
    code = "mfa_required"
    detail = "Enter the code from your authenticator app, or one of your recovery codes"


class AdminSecondFactorInvalid(ApiError):
    status = 401
    code = "mfa_verification_failed"
    detail = "Invalid authenticator or recovery code"


def admin_login(*, request: HttpRequest, email: str, password: str, code: str | None = None) -> User:
    """The Django admin's sign-in (accounts.backends): the API's limits and
    audit trail, no API session; a user with a second factor also gives its
    code (`code`: a TOTP code or a recovery code). Raises InvalidCredentials /
    RateLimited / Overloaded / AdminSecondFactorRequired / AdminSecondFactorInvalid."""
    user, account = _authenticate(request=request, password=password, email=email, username=None, surface="admin")
    _still_connected(request=request, account=account)
    amr = {}
    if mfa.user_has_second_factor(user_id=user.pk):
        amr = {"amr": _admin_second_factor(request=request, user=user, account=account, code=code)}
    throttles.login_succeeded(ip=client_ip(request), account=account)
    audit.record(AuditEvent.Kind.LOGIN_SUCCESS, request, user_id=user.pk, surface="admin", **amr)
    return user


def _admin_second_factor(*, request: HttpRequest, user: User, account: str, code: str | None) -> str:
    """The second step: the method the code proved. A wrong code keeps the
    failure counted in advance against the account (login_account_guard), so
    guessing codes spends the same budget as guessing passwords."""
    if not (code or "").strip():
        throttles.login_succeeded(ip=client_ip(request), account=account)  # the password was right: no guess
        raise AdminSecondFactorRequired()
    method = mfa.user_second_factor_check(user=user, code=code)
    if not method:
        audit.record(AuditEvent.Kind.MFA_VERIFY_FAILURE, request, user_id=user.pk, surface="admin")
        raise AdminSecondFactorInvalid()
    if method == "recovery":
        remaining = recovery.recovery_codes_remaining(user_id=user.pk)
        recovery_flows.recovery_code_used_notify(
            request=request, user=user, remaining=remaining, now=timezone.now(), surface="admin"
        )
    return method


def token_refresh(*, request: HttpRequest, refresh_token: str, surface: str = "native") -> IssuedTokens:
    """Rotate, audit (a replay is audited as reuse). The per-address limit is
    taken by the view before the body is parsed: throttles.refresh_guard."""
    tag = audit.surface_detail(surface)
    try:
        tokens = services.session_refresh(refresh_token=refresh_token)
    except RefreshTokenReused as exc:
        audit.record(AuditEvent.Kind.REFRESH_REUSE, request, user_id=exc.user_id, **tag)
        raise
    audit.record(AuditEvent.Kind.REFRESH, request, user_id=tokens.user.pk, session=tokens.session_id, **tag)
    return tokens


# --- one-time codes and links (accounts.onetime) --------------------------------------------
#
# Asking: an answer that never tells whether the address has an account. The
# per-IP limit and the per-address interval are counted for every address,
# known or not; for an unknown one (or an inactive account) nothing is written
# and no email goes out, and the answer is the same.


@dataclass(frozen=True)
class OneTimeRequest:
    purpose: str
    email: str
    redirect_to: str = ""
    code_challenge: str = ""
    code_challenge_method: str = ""


def _send_interval_group(purpose: str) -> str:
    # GoTrue keeps one sent-at per slot: recovery and magic link share one.
    return "recovery" if purpose in (Purpose.RECOVERY, Purpose.MAGICLINK) else str(purpose)


def ott_request(
    *, request: HttpRequest, ask: OneTimeRequest, create_user: bool = False, user_metadata: dict | None = None
) -> None:
    """Send a code and link for `ask.purpose` to `ask.email` if it has an active
    account (or, create_user, make a passwordless unconfirmed one first)."""
    throttles.ott_send_guard(ip=client_ip(request))
    onetime.send_interval_check(address=ask.email, group=_send_interval_group(ask.purpose))
    user = selectors.user_for_login(email=ask.email)
    if user is None and create_user:
        user = services.user_create_passwordless(email=ask.email, user_metadata=user_metadata or {})
    if user is None or not user.is_active:
        return
    if ask.purpose == Purpose.SIGNUP and user.email_confirmed_at is not None:
        return  # nothing to confirm (GoTrue's resend answers {} too)
    onetime.ott_issue(
        user=user,
        purpose=ask.purpose,
        sent_to=user.email,
        redirect_to=ask.redirect_to,
        code_challenge=ask.code_challenge,
        code_challenge_method=ask.code_challenge_method,
    )


# GoTrue's amr methods for a session started by a link (a code is "otp").
_LINK_METHODS = {Purpose.SIGNUP: "email/signup", Purpose.EMAIL_CHANGE_NEW: "email_change"}


def ott_sign_in(
    *,
    request: HttpRequest,
    purposes: list[str],
    email: str | None = None,
    code: str | None = None,
    token_hash: str | None = None,
    surface: str = "native",
    session: bool = True,
) -> tuple[OneTimeToken, IssuedTokens | None]:
    """Verify a code (with its address) or a link token and, session=True,
    start a session for its user. A verified address counts as confirmed (as
    GoTrue: the email proved it). OneTimeTokenInvalid for anything wrong."""
    throttles.ott_verify_guard(ip=client_ip(request))
    token = onetime.ott_consume(purposes=purposes, email=email, code=code, token_hash=token_hash)
    user = token.user
    if not user.is_active:
        raise onetime.OneTimeTokenInvalid()
    if token.purpose in onetime.SIGN_IN_PURPOSES and user.email_confirmed_at is None:
        services.user_confirm_email(user=user)
    if not session:
        return token, None
    method = "otp" if code is not None else _LINK_METHODS.get(str(token.purpose), str(token.purpose))
    tokens = services.session_login(user=user, ip=client_ip(request), user_agent=user_agent(request), method=method)
    onetime.ott_session_bind(token=token, session_id=tokens.session_id)
    audit.record(
        AuditEvent.Kind.LOGIN_SUCCESS,
        request,
        user_id=user.pk,
        session=tokens.session_id,
        method=str(token.purpose),
        **audit.surface_detail(surface),
    )
    return token, tokens


def pkce_sign_in(*, request: HttpRequest, auth_code: str, code_verifier: str, surface: str = "gotrue") -> IssuedTokens:
    """/token?grant_type=pkce: the auth code a redirecting verify handed out, with its verifier."""
    throttles.ott_verify_guard(ip=client_ip(request))
    try:
        token = onetime.pkce_exchange(auth_code=auth_code, code_verifier=code_verifier)
    except onetime.FlowStateNotFound:
        # Not an email link's code: a provider sign-in's (accounts.identities)?
        return identities.pkce_exchange(
            request=request, auth_code=auth_code, code_verifier=code_verifier, surface=surface
        )
    if not token.user.is_active:
        raise onetime.FlowStateNotFound()
    tokens = services.session_login(
        user=token.user,
        ip=client_ip(request),
        user_agent=user_agent(request),
        method=_LINK_METHODS.get(str(token.purpose), str(token.purpose)),
    )
    onetime.ott_session_bind(token=token, session_id=tokens.session_id)
    audit.record(
        AuditEvent.Kind.LOGIN_SUCCESS,
        request,
        user_id=token.user.pk,
        session=tokens.session_id,
        method=f"pkce_{token.purpose}",
        **audit.surface_detail(surface),
    )
    return tokens


def password_reset(
    *,
    request: HttpRequest,
    new_password: str,
    email: str | None = None,
    code: str | None = None,
    token_hash: str | None = None,
) -> None:
    """Forgotten password: a recovery code (with its address) or link token, then
    the new password. Every session of the user ends (the password changed)."""
    throttles.ott_verify_guard(ip=client_ip(request))
    token = onetime.ott_find(purposes=[Purpose.RECOVERY], email=email, code=code, token_hash=token_hash)
    user = token.user
    # Validated before the token is spent: a weak password leaves it usable.
    services.password_validate(password=new_password, user=user, field_name="new_password")
    onetime.ott_claim(token=token)
    if not user.is_active:
        raise onetime.OneTimeTokenInvalid()
    services.user_reset_password(user=user, new_password=new_password, request=request)
    audit.record(AuditEvent.Kind.PASSWORD_CHANGE, request, user_id=user.pk, method="recovery")


def reauthenticate_request(*, request: HttpRequest, user: User) -> None:
    """GoTrue's /reauthenticate: a code (the nonce) to the caller's confirmed address."""
    if user.email_confirmed_at is None:
        raise onetime.EmailNotConfirmed()
    throttles.ott_send_guard(ip=client_ip(request))
    onetime.send_interval_check(address=user.email, group=Purpose.REAUTHENTICATION)
    onetime.ott_issue(user=user, purpose=Purpose.REAUTHENTICATION, sent_to=user.email)


def reauthentication_verify(*, request: HttpRequest, user: User, nonce: str) -> None:
    """The nonce from /reauthenticate, spent (ReauthenticationNotValid if wrong or used)."""
    throttles.ott_verify_guard(ip=client_ip(request))
    try:
        onetime.ott_consume(purposes=[Purpose.REAUTHENTICATION], email=user.email, code=nonce)
    except onetime.OneTimeTokenInvalid:
        raise onetime.ReauthenticationNotValid() from None


def email_change_resend(*, request: HttpRequest, ask: OneTimeRequest) -> None:
    """/resend type=email_change: the pending change's pair again (nothing pending, or an
    unknown address: nothing sent, the same answer)."""
    throttles.ott_send_guard(ip=client_ip(request))
    user = selectors.user_for_login(email=ask.email)
    pending = email_change_pending(user=user) if user is not None and user.is_active else None
    if pending is None:
        onetime.send_interval_check(address=ask.email, group="email_change")
        return
    email_change_request(
        request=request,
        user=user,
        new_email=pending.sent_to,
        redirect_to=ask.redirect_to,
        code_challenge=ask.code_challenge,
        code_challenge_method=ask.code_challenge_method,
    )


# --- email change: both addresses confirm (GoTrue's secure email change) --------------------

EMAIL_CHANGE_PURPOSES = [Purpose.EMAIL_CHANGE_NEW, Purpose.EMAIL_CHANGE_CURRENT]


def _email_change_sibling(purpose: str) -> str:
    """The other half of an email change pair."""
    return Purpose.EMAIL_CHANGE_CURRENT if purpose == Purpose.EMAIL_CHANGE_NEW else Purpose.EMAIL_CHANGE_NEW


def email_change_request(
    *,
    request: HttpRequest,
    user: User,
    new_email: str,
    redirect_to: str = "",
    code_challenge: str = "",
    code_challenge_method: str = "",
) -> None:
    """Send a code and link to the new address and to the current one; the
    address changes when both are used (email_change_verify). A newer request
    replaces a pending one."""
    throttles.ott_send_guard(ip=client_ip(request))
    if selectors.user_for_login(email=new_email) is not None:
        raise onetime.EmailExists()
    onetime.send_interval_check(address=user.email, group="email_change")
    now = timezone.now()
    context = {"old_email": user.email, "new_email": new_email}
    with transaction.atomic():
        # One `now` for both: the pair is the two tokens created together.
        for purpose, address in ((Purpose.EMAIL_CHANGE_NEW, new_email), (Purpose.EMAIL_CHANGE_CURRENT, user.email)):
            onetime.ott_issue(
                user=user,
                purpose=purpose,
                sent_to=address,
                redirect_to=redirect_to,
                code_challenge=code_challenge,
                code_challenge_method=code_challenge_method,
                context=context,
                now=now,
            )


def email_change_pending(*, user: User) -> OneTimeToken | None:
    """The live token of the user's pending change, sent to the new address."""
    return (
        OneTimeToken.objects.filter(
            user=user, purpose=Purpose.EMAIL_CHANGE_NEW, used_at__isnull=True, expires_at__gt=timezone.now()
        )
        .order_by("-created_at")
        .first()
    )


def email_change_verify(
    *,
    request: HttpRequest,
    email: str | None = None,
    code: str | None = None,
    token_hash: str | None = None,
    surface: str = "native",
    session: bool = True,
) -> tuple[OneTimeToken, IssuedTokens | None, bool]:
    """Spend one of the pair; once both are spent, the address changes (and, session=True,
    a session starts). Returns (token, tokens or None, changed). The user's row is locked
    while a token is claimed and its sibling read: of two verifies racing on the two
    tokens, the second sees the first's claim."""
    throttles.ott_verify_guard(ip=client_ip(request))
    with transaction.atomic():
        token = onetime.ott_find(purposes=EMAIL_CHANGE_PURPOSES, email=email, code=code, token_hash=token_hash)
        user = User.objects.select_for_update().get(pk=token.user_id)
        onetime.ott_claim(token=token)
        sibling = OneTimeToken.objects.filter(
            user=user, purpose=_email_change_sibling(token.purpose), created_at=token.created_at
        ).first()
        if sibling is None or sibling.used_at is None or not user.is_active:
            return token, None, False
        new_email = token.sent_to if token.purpose == Purpose.EMAIL_CHANGE_NEW else sibling.sent_to
        services.user_change_email(user=user, new_email=new_email)
    token.user = user
    if not session:
        return token, None, True
    tokens = services.session_login(
        user=user, ip=client_ip(request), user_agent=user_agent(request), method="email_change"
    )
    audit.record(
        AuditEvent.Kind.LOGIN_SUCCESS,
        request,
        user_id=user.pk,
        session=tokens.session_id,
        method="email_change",
        **audit.surface_detail(surface),
    )
    return token, tokens, True


# --- invites and admin-generated links (the service-role API) -------------------------------


def _invitee(*, email: str, user_metadata: dict | None) -> User:
    """The unconfirmed, passwordless account an invite or link names (made if missing);
    a confirmed one: EmailExists (GoTrue's 422 email_exists)."""
    user = selectors.user_for_login(email=email)
    if user is None:
        return services.user_create_passwordless(email=email, user_metadata=user_metadata or {})
    if user.email_confirmed_at is not None:
        raise onetime.EmailExists()
    return user


def user_invite(*, request: HttpRequest, email: str, user_metadata: dict | None = None, redirect_to: str = "") -> User:
    """/invite: the account (unconfirmed, no password) and an invite email; its code or link
    signs in (and confirms), and that session may set a password without a current one."""
    user = _invitee(email=email, user_metadata=user_metadata)
    onetime.ott_issue(user=user, purpose=Purpose.INVITE, sent_to=user.email, redirect_to=redirect_to)
    audit.record(AuditEvent.Kind.ADMIN_USER_INVITED, request, user_id=user.pk, **_admin("gotrue"))
    return user


@dataclass(frozen=True)
class GeneratedLink:
    user: User
    action_link: str
    email_otp: str
    hashed_token: str
    verification_type: str
    redirect_to: str


GENERATE_LINK_PURPOSES = {
    "signup": Purpose.SIGNUP,
    "invite": Purpose.INVITE,
    "magiclink": Purpose.MAGICLINK,
    "recovery": Purpose.RECOVERY,
    "email_change_current": Purpose.EMAIL_CHANGE_CURRENT,
    "email_change_new": Purpose.EMAIL_CHANGE_NEW,
}


def email_change_half(*, user: User, new_email: str, purpose: str, redirect_to: str = "") -> onetime.OneTimeIssue:
    """One half of an email change, returned and not emailed (generate_link's
    email_change_current / email_change_new). The address changes once both
    halves of a pair (two tokens created together) are used, so a half is paired
    with the other half of a pending change to the same new address: an operator
    generates each half in turn, as with GoTrue. Without one, a new pair is made,
    replacing any other pending change; its other half is known to nobody until
    it is generated. EmailExists if the new address has an account."""
    if selectors.user_for_login(email=new_email) is not None:
        raise onetime.EmailExists()
    address = {Purpose.EMAIL_CHANGE_NEW: new_email.strip().lower(), Purpose.EMAIL_CHANGE_CURRENT: user.email}
    now = timezone.now()
    with transaction.atomic():
        User.objects.select_for_update().filter(pk=user.pk).first()  # one pairing at a time per user
        pending = (
            OneTimeToken.objects.filter(
                user=user,
                purpose=Purpose.EMAIL_CHANGE_NEW,
                sent_to=address[Purpose.EMAIL_CHANGE_NEW],
                expires_at__gt=now,
            )
            .order_by("-created_at")
            .first()
        )
        paired_at = pending.created_at if pending is not None else now
        if pending is None:
            other = _email_change_sibling(purpose)
            onetime.ott_issue(user=user, purpose=other, sent_to=address[other], email=False, now=paired_at)
        return onetime.ott_issue(
            user=user, purpose=purpose, sent_to=address[purpose], redirect_to=redirect_to, email=False, now=paired_at
        )


def link_generate(
    *,
    request: HttpRequest,
    kind: str,
    email: str,
    password: str = "",
    user_metadata: dict | None = None,
    redirect_to: str = "",
    new_email: str = "",
) -> GeneratedLink:
    """/admin/generate_link: the link and code, returned and not emailed (GoTrue's
    adminGenerateLink). An unknown address: signup/invite make the account, magiclink
    signs it up, recovery and the email change halves are 404 user_not_found."""
    purpose = GENERATE_LINK_PURPOSES[kind]
    user = selectors.user_for_login(email=email)
    if user is None:
        if kind == "recovery" or purpose in EMAIL_CHANGE_PURPOSES:
            raise onetime.UserNotFoundByEmail()
        if kind == "magiclink":
            kind, purpose = "signup", Purpose.SIGNUP
    if kind in ("signup", "invite"):
        user = _invitee(email=email, user_metadata=user_metadata)
        if kind == "signup" and password:
            services.user_set_initial_password(user=user, password=password)
    if purpose in EMAIL_CHANGE_PURPOSES:
        token = email_change_half(user=user, new_email=new_email, purpose=purpose, redirect_to=redirect_to)
    else:
        token = onetime.ott_issue(user=user, purpose=purpose, sent_to=user.email, redirect_to=redirect_to, email=False)
    link = onetime.ott_link(token_id=token.token.pk, purpose=token.token.purpose, redirect_to=redirect_to)
    audit.record(AuditEvent.Kind.ADMIN_LINK_GENERATED, request, user_id=user.pk, type=kind, **_admin("gotrue"))
    return GeneratedLink(
        user=user,
        action_link=link,
        email_otp=token.code,
        hashed_token=token.link_token,
        verification_type=kind,
        redirect_to=redirect_to,
    )


# --- the admin API (service role) ---------------------------------------------------------
#
# Every admin action is audited with the actor (the service role) and the
# target user; the detail names the fields changed, never their values.

SERVICE_ROLE = "service_role"


def _admin(surface: str) -> dict[str, str]:
    return {"actor": SERVICE_ROLE, **audit.surface_detail(surface)}


def admin_user_create(*, request: HttpRequest, surface: str = "gotrue", **fields: Any) -> User:
    user = services.admin_user_create(request=request, **fields)
    detail = _admin(surface)
    audit.record(AuditEvent.Kind.ADMIN_USER_CREATED, request, user_id=user.pk, **detail)
    if user.banned_until is not None:
        audit.record(AuditEvent.Kind.ADMIN_USER_BANNED, request, user_id=user.pk, until=user.banned_until, **detail)
    return user


def admin_user_update(*, request: HttpRequest, user_id: uuid.UUID, surface: str = "gotrue", **fields: Any) -> User:
    user, changed = services.admin_user_update(request=request, user_id=user_id, **fields)
    detail = _admin(surface)
    if changed:
        audit.record(AuditEvent.Kind.ADMIN_USER_UPDATED, request, user_id=user.pk, fields=",".join(changed), **detail)
    if "banned_until" in changed:
        if user.is_banned():
            audit.record(AuditEvent.Kind.ADMIN_USER_BANNED, request, user_id=user.pk, until=user.banned_until, **detail)
        else:
            audit.record(AuditEvent.Kind.ADMIN_USER_UNBANNED, request, user_id=user.pk, **detail)
    return user


def admin_user_delete(*, request: HttpRequest, user_id: uuid.UUID, soft: bool, surface: str = "gotrue") -> None:
    services.admin_user_delete(user_id=user_id, soft=soft)
    audit.record(AuditEvent.Kind.ADMIN_USER_DELETED, request, user_id=user_id, soft=soft, **_admin(surface))
