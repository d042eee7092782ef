"""Password hashers: argon2id at the OWASP minimum, and Supabase's bcrypt."""

from __future__ import annotations

from argon2 import Type, extract_parameters
from argon2.exceptions import InvalidHashError
from django.contrib.auth.hashers import Argon2PasswordHasher, BCryptPasswordHasher
from nacl.bindings import crypto_pwhash_str_verify
from nacl.exceptions import InvalidkeyError

from velro.context import phase
from velro.hashpool import hash_run

# libsodium refuses a hash string of crypto_pwhash_STRBYTES (128) bytes or more.
_SODIUM_MAX_ENCODED = 127


def sodium_verifies(phc: str) -> bool:
    """Does libsodium verify this PHC string (`$argon2id$v=19$...`) exactly as
    argon2-cffi would? Its argon2 covers argon2id and argon2i, version 1.3, one
    lane; anything else (argon2d, v=16, p > 1, a malformed string) is left to
    argon2-cffi."""
    if len(phc) > _SODIUM_MAX_ENCODED or not phc.isascii():
        return False
    try:
        params = extract_parameters(phc)
    except InvalidHashError:
        return False
    return params.type in (Type.ID, Type.I) and params.version == 19 and params.parallelism == 1


def argon2_verify(password: str, phc: str) -> bool | None:
    """libsodium's verify of `password` against `phc`; None where it does not
    apply (sodium_verifies). Same hash, same parameters, same constant-time
    comparison as argon2-cffi's, but libsodium picks its AVX2/AVX-512 Blake2b
    rounds at run time where argon2-cffi's portable wheel runs SSE2 ones: a
    login's verify is ~15% cheaper (README: Performance)."""
    if not sodium_verifies(phc):
        return None
    try:
        crypto_pwhash_str_verify(phc.encode("ascii"), password.encode())
    except InvalidkeyError:  # wrong password (or a salt/hash that does not decode)
        return False
    return True


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
        # Still argon2-cffi: libsodium takes only 16-byte salts, Django's are 22 characters.
        with phase("hash"):
            return hash_run(super().encode, password, salt)

    def verify(self, password: str, encoded: str) -> bool:
        with phase("hash"):
            return hash_run(self._verify, password, encoded)

    def _verify(self, password: str, encoded: str) -> bool:
        algorithm, _, rest = encoded.partition("$")
        if algorithm == self.algorithm:
            verified = argon2_verify(password, "$" + rest)
            if verified is not None:
                return verified
        return super().verify(password, encoded)


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
