"""Human-friendly referral codes: Crockford base32, 8 characters.

The alphabet has no I, L, O or U, so a code read aloud or copied by hand is
unambiguous; input is normalised the Crockford way (case-insensitive, O->0,
I/L->1, hyphens and spaces ignored). 32^8 = 1.1e12 codes.
"""

from __future__ import annotations

import secrets

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
LENGTH = 8
_TRANSLATE = str.maketrans({"O": "0", "I": "1", "L": "1", "-": None, " ": None})


def referral_code_new() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def referral_code_normalize(raw: str) -> str | None:
    """The canonical form of a typed code, or None if it cannot be a code."""
    code = raw.strip().upper().translate(_TRANSLATE)
    if len(code) != LENGTH or any(char not in ALPHABET for char in code):
        return None
    return code
