"""Which rate limits guard which auth operation (checked before any hashing)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from velro.errors import RateLimited
from velro.ratelimit import Rate, limiter


def login_account(*, user_id: uuid.UUID | None, identifier: str) -> str:
    """The key of an account's failure budgets: the account itself, so its
    email and its username share one budget; for an unknown identifier, the
    identifier (there is no account to protect, only guesses to cap)."""
    return f"user:{user_id}" if user_id is not None else f"unknown:{identifier.strip().lower()}"


def _account_ip(account: str, ip: str | None) -> tuple[str, str, Rate]:
    return "login-fail-acct-ip", f"{account}|{ip or 'unknown'}", Rate.setting("RATELIMIT_LOGIN_FAILURES_ACCOUNT_IP")


def _account(account: str) -> tuple[str, str, Rate]:
    return "login-fail-acct", account, Rate.setting("RATELIMIT_LOGIN_FAILURES_ACCOUNT")


def login_ip_guard(*, ip: str | None) -> None:
    limiter.hit("login-ip", ip or "unknown", Rate.setting("RATELIMIT_LOGIN_IP"))


def login_account_guard(*, ip: str | None, account: str, known_source: Callable[[], bool]) -> None:
    """Count the attempt, in advance, as a failure against the account: a
    burst of parallel guesses each takes a slot before its password is
    checked, so no burst gets more checks than the limit allows.
    login_succeeded() hands the slots back.

    Two budgets, counted in one cache round trip: per account and source
    address (small: one address guessing stops soon), and per account from
    anywhere (caps a distributed attack). An attempt refused by the first is
    not charged to the second. The second does not apply to an address the
    account has signed in from before (`known_source`, asked only once it is
    exhausted): strangers spreading failures over many addresses cannot lock
    the owner out (OWASP: lockout as denial of service), while guessing from
    unknown addresses stays capped."""
    per_source, anywhere = _account_ip(account, ip), _account(account)
    source_over, account_over = limiter.hit_each([per_source, anywhere])
    if source_over is not None:
        limiter.add(*anywhere, amount=-1)  # refused here: not a guess against the account
        raise RateLimited(headers={"Retry-After": str(source_over)})
    if account_over is not None and not known_source():
        limiter.add(*per_source, amount=-1)  # refused: no check was spent
        raise RateLimited(headers={"Retry-After": str(account_over)})


def login_succeeded(*, ip: str | None, account: str) -> None:
    limiter.add_many([_account_ip(account, ip), _account(account)], amount=-1)


def signup_guard(*, ip: str | None) -> None:
    limiter.hit("signup-ip", ip or "unknown", Rate.setting("RATELIMIT_SIGNUP_IP"))


def refresh_guard(*, ip: str | None) -> None:
    limiter.hit("refresh-ip", ip or "unknown", Rate.setting("RATELIMIT_REFRESH_IP"))


def password_change_guard(*, user_id: uuid.UUID) -> None:
    limiter.hit("password-user", str(user_id), Rate.setting("RATELIMIT_PASSWORD_USER"))


def api_key_create_guard(*, user_id: uuid.UUID) -> None:
    limiter.hit("apikey-user", str(user_id), Rate.setting("RATELIMIT_API_KEYS_USER"))


def ott_send_guard(*, ip: str | None) -> None:
    """Emails with a code or link asked for from one address (recover, otp, magiclink, resend)."""
    limiter.hit("ott-send-ip", ip or "unknown", Rate.setting("RATELIMIT_OTT_SEND_IP"))


def ott_verify_guard(*, ip: str | None) -> None:
    """Codes and links tried from one address (on top of each token's own attempt bound)."""
    limiter.hit("ott-verify-ip", ip or "unknown", Rate.setting("RATELIMIT_OTT_VERIFY_IP"))


def mfa_verify_guard(*, user_id: uuid.UUID, factor_id: str) -> None:
    """TOTP codes tried against one factor, from anywhere (keyed by its owner too:
    another account naming the factor id spends its own budget, not the owner's)."""
    limiter.hit("mfa-verify-factor", f"{user_id}|{factor_id}", Rate.setting("RATELIMIT_MFA_VERIFY_FACTOR"))


def recovery_code_guard(*, user_id: uuid.UUID) -> None:
    """Recovery codes tried by one user (each try counts: a code is spent by its first success)."""
    limiter.hit("recovery-code-user", str(user_id), Rate.setting("RATELIMIT_RECOVERY_CODE_USER"))
