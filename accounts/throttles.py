"""Which rate limits guard which auth operation (checked before any hashing)."""

from __future__ import annotations

import uuid

from velro.ratelimit import Rate, limiter


def login_guard(*, ip: str | None, identifier: str) -> None:
    ip = ip or "unknown"
    account = identifier.strip().lower()
    limiter.hit("login-ip", ip, Rate.setting("RATELIMIT_LOGIN_IP"))
    limiter.check("login-fail-acct-ip", f"{account}|{ip}", Rate.setting("RATELIMIT_LOGIN_FAILURES_ACCOUNT_IP"))
    limiter.check("login-fail-acct", account, Rate.setting("RATELIMIT_LOGIN_FAILURES_ACCOUNT"))


def login_failed(*, ip: str | None, identifier: str) -> None:
    ip = ip or "unknown"
    account = identifier.strip().lower()
    limiter.add("login-fail-acct-ip", f"{account}|{ip}", Rate.setting("RATELIMIT_LOGIN_FAILURES_ACCOUNT_IP"))
    limiter.add("login-fail-acct", account, Rate.setting("RATELIMIT_LOGIN_FAILURES_ACCOUNT"))


def signup_guard(*, ip: str | None) -> None:
    limiter.hit("signup-ip", ip or "unknown", Rate.setting("RATELIMIT_SIGNUP_IP"))


def refresh_guard(*, ip: str | None) -> None:
    limiter.hit("refresh-ip", ip or "unknown", Rate.setting("RATELIMIT_REFRESH_IP"))


def password_change_guard(*, user_id: uuid.UUID) -> None:
    limiter.hit("password-user", str(user_id), Rate.setting("RATELIMIT_PASSWORD_USER"))


def api_key_create_guard(*, user_id: uuid.UUID) -> None:
    limiter.hit("apikey-user", str(user_id), Rate.setting("RATELIMIT_API_KEYS_USER"))
