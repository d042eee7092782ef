"""API key format and keyed hashing."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from accounts.tokens import derived_key

KEY_PREFIX = "vk_live_"
VISIBLE_CHARS = 8


def api_key_new() -> str:
    """`vk_live_` + 256 random bits, base64url."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def api_key_looks_valid(key: str) -> bool:
    return key.startswith(KEY_PREFIX) and 40 <= len(key) <= 100 and key.isascii()


def api_key_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + VISIBLE_CHARS]


def api_key_hash(key: str) -> str:
    return hmac.new(derived_key("api-key"), key.encode(), hashlib.sha256).hexdigest()
