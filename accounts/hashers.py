"""Password hashers: argon2id at the OWASP minimum, and Supabase's bcrypt."""

from __future__ import annotations

from django.contrib.auth.hashers import Argon2PasswordHasher, BCryptPasswordHasher

from velro.context import phase
from velro.hashpool import hash_run


class Argon2idPasswordHasher(Argon2PasswordHasher):
    """argon2id with m=19456 KiB, t=2, p=1 (OWASP Password Storage Cheat Sheet).

    Django's default (m=100 MiB, p=8) costs several times more per login on a
    2-core box for no gain against the OWASP baseline. Hashes made with other
    parameters are upgraded on the next successful login (must_update).
    """

    time_cost = 2
    memory_cost = 19456
    parallelism = 1

    # On a hash thread (velro.hashpool): the same work at a lower CPU priority.
    def encode(self, password: str, salt: str) -> str:
        with phase("hash"):
            return hash_run(super().encode, password, salt)

    def verify(self, password: str, encoded: str) -> bool:
        with phase("hash"):
            return hash_run(super().verify, password, encoded)


class SupabaseBCryptPasswordHasher(BCryptPasswordHasher):
    """Verifies the `$2a$10$...` hashes of a Supabase (GoTrue) export.

    Stored as `bcrypt$<hash>`. bcrypt only ever read the first 72 bytes of a
    password; the bcrypt package (>= 5) raises on longer input instead, so we
    truncate as the original hash did. It is never used to make new hashes:
    a verified bcrypt hash is upgraded to argon2id on that login.
    """

    rounds = 10

    def encode(self, password: str, salt: bytes | str) -> str:
        bcrypt = self._load_library()
        if isinstance(salt, str):
            salt = salt.encode("ascii")
        data = bcrypt.hashpw(password.encode()[:72], salt)
        return f"{self.algorithm}${data.decode('ascii')}"

    def verify(self, password: str, encoded: str) -> bool:
        try:
            with phase("hash"):
                return hash_run(super().verify, password, encoded)
        except ValueError:
            # A malformed stored hash is a failed login, not a 500.
            return False
