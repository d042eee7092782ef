"""Which rate limits guard which auth operation (checked before any hashing)."""

from __future__ import annotations

import uuid

from velro.ratelimit import Rate, limiter


def _account_buckets(ip: str | None, identifier: str) -> list[tuple[str, str, Rate]]:
    account = identifier.strip().lower()
    return [
        ("login-fail-acct-ip", f"{account}|{ip or 'unknown'}", Rate.setting("RATELIMIT_LOGIN_FAILURES_ACCOUNT_IP")),
        ("login-fail-acct", account, Rate.setting("RATELIMIT_LOGIN_FAILURES_ACCOUNT")),
    ]


def login_guard(*, ip: str | None, identifier: str) -> None:
    """Count the attempt against the IP and, in advance, as a failure against
    the account: a burst of parallel guesses each takes a slot before its
    password is checked, so no burst gets more checks than the limit allows.
    login_succeeded() hands the account slot back."""
    limiter.hit("login-ip", ip or "unknown", Rate.setting("RATELIMIT_LOGIN_IP"))
    for bucket, ident, rate in _account_buckets(ip, identifier):
        limiter.hit(bucket, ident, rate)


def login_succeeded(*, ip: str | None, identifier: str) -> None:
    for bucket, ident, rate in _account_buckets(ip, identifier):
        limiter.add(bucket, ident, rate, amount=-1)


def signup_guard(*, ip: str | None) -> None:
    limiter.hit("signup-ip", ip or "unknown", Rate.setting("RATELIMIT_SIGNUP_IP"))


def refresh_guard(*, ip: str | None) -> None:
    limiter.hit("refresh-ip", ip or "unknown", Rate.setting("RATELIMIT_REFRESH_IP"))


def password_change_guard(*, user_id: uuid.UUID) -> None:
    limiter.hit("password-user", str(user_id), Rate.setting("RATELIMIT_PASSWORD_USER"))


def api_key_create_guard(*, user_id: uuid.UUID) -> None:
    limiter.hit("apikey-user", str(user_id), Rate.setting("RATELIMIT_API_KEYS_USER"))
