"""Asymmetric signing keys: the key store, rotation, and the keys each process uses.

One table (`auth_signing_keys`, accounts.models.SigningKey) holds every key of
both token surfaces. A key moves standby -> active -> retired, or to revoked
from any state when it is compromised:

- standby: published in the JWKS and accepted for verification, signs nothing.
  Added ahead of a rotation so every consumer's JWKS cache knows it before the
  first token it signs arrives.
- active: signs every new access token (native and GoTrue). At most one: a
  partial unique index, and state changes are conditional UPDATEs in one
  transaction (promote retires the previous active key).
- retired: still verifies (and is published) until its retirement is older than
  the longest access-token lifetime, so tokens it signed live out their TTL.
- revoked: never verifies again, on any node within JWT_SIGNING_KEYS_CACHE_SECONDS.

The private key is stored encrypted with Fernet (AES-128-CBC + HMAC-SHA256,
from `cryptography`) under a key derived from SECRET_KEY for this purpose
(accounts.tokens.derived_key("signing-keys")); keys encrypted under a secret
now listed in SECRET_KEY_FALLBACKS still decrypt, so SECRET_KEY can rotate.
Key generation, signing and verification are PyJWT's and cryptography's.

Each process keeps the key set (`keys`, a KeyStore) for
JWT_SIGNING_KEYS_CACHE_SECONDS; a token naming a key id the process does not
know makes it reload from PostgreSQL at once (at most once per second), so a
key promoted on another node verifies here on its first token.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt
from cryptography.fernet import InvalidToken, MultiFernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from accounts import tokens
from accounts.models import SigningAlgorithm, SigningKey, SigningKeyState
from monitoring.models import AuditEvent
from velro.errors import Unavailable

ALGORITHMS = tuple(SigningAlgorithm.values)  # what a stored key may be: never "none", never HS*
RSA_KEY_BITS = 2048
# An unknown key id reloads the key set at most this often per process: a flood
# of made-up kids costs PostgreSQL one small query per second per process.
UNKNOWN_KID_RELOAD_SECONDS = 1.0
ENCRYPTION_PURPOSE = "signing-keys"

logger = logging.getLogger("velro.signing")


class SigningKeyError(Exception):
    """A refused key operation (an invalid transition, an unknown kid)."""


# --- encryption at rest -----------------------------------------------------------------


def _fernet() -> MultiFernet:
    # The first key encrypts; the SECRET_KEY_FALLBACKS ones still decrypt.
    return tokens.derived_fernet(ENCRYPTION_PURPOSE)


def _private_key_encrypt(private_key: Any) -> str:
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return _fernet().encrypt(pem).decode("ascii")


def _private_key_decrypt(encrypted: str) -> Any:
    try:
        pem = _fernet().decrypt(encrypted.encode("ascii"))
    except InvalidToken:
        raise SigningKeyError(
            "a signing key cannot be decrypted: SECRET_KEY changed (list the old one in SECRET_KEY_FALLBACKS)"
        ) from None
    return serialization.load_pem_private_key(pem, password=None)


# --- the key store (writes) ---------------------------------------------------------------


def _key_new(*, algorithm: str, state: str) -> SigningKey:
    if algorithm not in ALGORITHMS:
        raise SigningKeyError(f"unsupported algorithm {algorithm!r}: use one of {', '.join(ALGORITHMS)}")
    if algorithm == SigningAlgorithm.ES256:
        private_key: Any = ec.generate_private_key(ec.SECP256R1())
        public_jwk = ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    else:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
        public_jwk = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    kid = str(uuid.uuid4())
    now = timezone.now()
    # GoTrue's public JWK members: use "sig", key_ops ["verify"] (conf/jwk.go).
    public_jwk.update({"kid": kid, "alg": algorithm, "use": "sig", "key_ops": ["verify"]})
    return SigningKey(
        kid=kid,
        algorithm=algorithm,
        state=state,
        private_key_encrypted=_private_key_encrypt(private_key),
        public_jwk=public_jwk,
        created_at=now,
        activated_at=now if state == SigningKeyState.ACTIVE else None,
    )


def _audit(key: SigningKey, *, action: str, previous: str, actor: str) -> None:
    # Written in the key change's own transaction: rare, and never to be lost.
    AuditEvent.objects.create(
        kind=AuditEvent.Kind.SIGNING_KEY_CHANGED,
        identifier=actor[:254],
        detail={"kid": key.kid, "algorithm": key.algorithm, "action": action, "from": previous, "to": key.state},
    )


def _changed() -> None:
    # This process sees the change at once (and again after the commit, in case
    # another thread reloaded in between); the others within their cache TTL,
    # or at once for a kid they have not seen.
    keys.invalidate()
    transaction.on_commit(keys.invalidate)


@transaction.atomic
def signing_key_add(*, algorithm: str | None = None, actor: str = "") -> SigningKey:
    """A new standby key: published in the JWKS, signing nothing until promoted."""
    key = _key_new(algorithm=algorithm or settings.JWT_SIGNING_ALGORITHM, state=SigningKeyState.STANDBY)
    key.save(force_insert=True)
    _audit(key, action="add", previous="", actor=actor)
    _changed()
    return key


def _state_of(kid: str) -> str:
    state = SigningKey.objects.filter(kid=kid).values_list("state", flat=True).first()
    if state is None:
        raise SigningKeyError(f"no signing key {kid}")
    return state


def signing_key_promote(*, kid: str, actor: str = "") -> SigningKey:
    """standby -> active; the previous active key -> retired. One transaction."""
    now = timezone.now()
    try:
        with transaction.atomic():
            previous = list(SigningKey.objects.select_for_update().filter(state=SigningKeyState.ACTIVE))
            # Retire first: the partial unique index allows one active row at a time.
            SigningKey.objects.filter(state=SigningKeyState.ACTIVE).exclude(kid=kid).update(
                state=SigningKeyState.RETIRED, retired_at=now
            )
            promoted = SigningKey.objects.filter(kid=kid, state=SigningKeyState.STANDBY).update(
                state=SigningKeyState.ACTIVE, activated_at=now
            )
            if not promoted:
                raise SigningKeyError(
                    f"cannot promote {kid}: it is {_state_of(kid)} (only a standby key can be promoted)"
                )
            for old in previous:
                old.state, old.retired_at = SigningKeyState.RETIRED, now
                _audit(old, action="retire", previous=SigningKeyState.ACTIVE, actor=actor)
            key = SigningKey.objects.get(kid=kid)
            _audit(key, action="promote", previous=SigningKeyState.STANDBY, actor=actor)
            _changed()
    except IntegrityError:
        # Another promotion committed between our UPDATEs: it won.
        raise SigningKeyError(f"cannot promote {kid}: another key was promoted at the same time") from None
    return key


@transaction.atomic
def signing_key_retire(*, kid: str, actor: str = "") -> SigningKey:
    """A standby key that will not be promoted -> retired. The active key is
    retired by promoting its successor (never left without one)."""
    now = timezone.now()
    if not SigningKey.objects.filter(kid=kid, state=SigningKeyState.STANDBY).update(
        state=SigningKeyState.RETIRED, retired_at=now
    ):
        state = _state_of(kid)
        hint = " (promote another key to retire it)" if state == SigningKeyState.ACTIVE else ""
        raise SigningKeyError(f"cannot retire {kid}: it is {state}{hint}")
    key = SigningKey.objects.get(kid=kid)
    _audit(key, action="retire", previous=SigningKeyState.STANDBY, actor=actor)
    _changed()
    return key


@transaction.atomic
def signing_key_revoke(*, kid: str, actor: str = "") -> tuple[SigningKey, str]:
    """Any state -> revoked: tokens it signed stop verifying everywhere. Returns (key, previous state)."""
    previous = SigningKey.objects.select_for_update().filter(kid=kid).values_list("state", flat=True).first()
    if previous is None:
        raise SigningKeyError(f"no signing key {kid}")
    if previous == SigningKeyState.REVOKED:
        raise SigningKeyError(f"cannot revoke {kid}: it is already revoked")
    SigningKey.objects.filter(kid=kid).update(state=SigningKeyState.REVOKED, revoked_at=timezone.now())
    key = SigningKey.objects.get(kid=kid)
    _audit(key, action="revoke", previous=previous, actor=actor)
    _changed()
    return key, previous


def signing_key_create_active() -> SigningKey:
    """The first active key, when there is none; race-safe.

    Two processes that both found no active key both insert one: the partial
    unique index lets exactly one commit (on PostgreSQL the second INSERT waits
    for the first transaction, then fails), and the loser uses the winner's.
    """
    key = _key_new(algorithm=settings.JWT_SIGNING_ALGORITHM, state=SigningKeyState.ACTIVE)
    try:
        with transaction.atomic():
            key.save(force_insert=True)
    except IntegrityError:
        return SigningKey.objects.get(state=SigningKeyState.ACTIVE)
    # Logged, not an audit event: the audit trail records what people did (the
    # signing_keys command); the row's created_at records this too.
    logger.info("no active signing key: created %s (%s)", key.kid, key.algorithm)
    _changed()
    return key


def signing_key_ensure_active() -> SigningKey:
    return SigningKey.objects.filter(state=SigningKeyState.ACTIVE).first() or signing_key_create_active()


def signing_keys_list() -> list[SigningKey]:
    return list(SigningKey.objects.order_by("created_at"))


def retired_verify_window() -> int:
    """How long a retired key still verifies: the longest access-token lifetime
    (both surfaces issue tokens of ACCESS_TOKEN_TTL_SECONDS) plus the leeway."""
    return settings.ACCESS_TOKEN_TTL_SECONDS + settings.JWT_LEEWAY_SECONDS


# --- the keys a process uses (reads, cached) ---------------------------------------------


@dataclass(frozen=True)
class Signer:
    kid: str
    algorithm: str
    private_key: Any


@dataclass(frozen=True)
class Verifier:
    kid: str
    algorithm: str
    public_key: Any
    public_jwk: dict
    verify_until: float | None  # unix time after which a retired key no longer verifies

    def usable(self, now: float) -> bool:
        return self.verify_until is None or now < self.verify_until


@dataclass(frozen=True)
class KeyRing:
    signer: Signer | None
    verifiers: dict[str, Verifier]
    # The active key's kid when its private half could not be decrypted here.
    undecryptable: str | None = None


class SigningUnavailable(Unavailable):
    """The active key cannot sign on this process (its private half does not
    decrypt: SECRET_KEY changed without SECRET_KEY_FALLBACKS). Verifying goes
    on (the public halves are stored in clear), so signed-in clients keep
    working; new tokens are refused with a 503 until the operator lists the
    old secret in SECRET_KEY_FALLBACKS or promotes a new key."""

    code = "signing_key_unavailable"
    detail = "Tokens cannot be issued right now; try again shortly"


class KeyStore:
    """The key set one process uses, reloaded every JWT_SIGNING_KEYS_CACHE_SECONDS.

    Reading a fresh ring is a dict lookup (the hot path: no SQL, no lock).
    Decrypted private keys and parsed public keys are kept by kid across
    reloads: key material never changes, only states do.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.reset(clock=clock)

    def reset(self, *, clock: Callable[[], float] | None = None) -> None:
        if clock is not None:
            self.clock = clock
        self._ring: KeyRing | None = None
        self._loaded_at = float("-inf")
        self._unknown_reload_at = float("-inf")
        self._lock = threading.Lock()
        self._material: dict[str, tuple[Any, Any]] = {}  # kid -> (private key or None, public key)

    def invalidate(self) -> None:
        self._ring = None

    def ring(self) -> KeyRing:
        return self._ring_and_reloaded()[0]

    def _ring_and_reloaded(self) -> tuple[KeyRing, bool]:
        ring = self._ring
        if ring is not None and self.clock() - self._loaded_at < settings.JWT_SIGNING_KEYS_CACHE_SECONDS:
            return ring, False
        with self._lock:
            ring = self._ring  # another thread may have reloaded while this one waited
            if ring is not None and self.clock() - self._loaded_at < settings.JWT_SIGNING_KEYS_CACHE_SECONDS:
                return ring, False
            try:
                return self._load(), True
            except DatabaseError as exc:
                if ring is None:
                    raise  # nothing known yet: the request answers 503
                # PostgreSQL unreachable (or its breaker open): keep the last
                # key set rather than fail every token check (a warm /me needs
                # no SQL otherwise). A key cannot be revoked without the
                # database, so only a node cut off from it alone can miss a
                # revocation, until it reaches the database again. Retried
                # once per cache period, not on every request.
                self._loaded_at = self.clock()
                logger.warning("signing keys not reloaded (%s): using the last key set", exc.__class__.__name__)
                return ring, False

    def _load(self) -> KeyRing:
        started = self.clock()
        window = retired_verify_window()
        rows = SigningKey.objects.filter(
            Q(state__in=(SigningKeyState.ACTIVE, SigningKeyState.STANDBY))
            | Q(state=SigningKeyState.RETIRED, retired_at__gt=timezone.now() - timedelta(seconds=window))
        ).only("kid", "algorithm", "state", "public_jwk", "private_key_encrypted", "retired_at")
        signer, verifiers, undecryptable = None, {}, None
        for row in rows:
            private_key, public_key = self._material.get(row.kid, (None, None))
            if public_key is None:
                public_key = jwt.PyJWK(row.public_jwk, algorithm=row.algorithm).key
            if row.state == SigningKeyState.ACTIVE:
                try:
                    if private_key is None:
                        private_key = _private_key_decrypt(row.private_key_encrypted)
                    signer = Signer(kid=row.kid, algorithm=row.algorithm, private_key=private_key)
                except SigningKeyError as exc:
                    # Logged on every reload (once per cache period), not per request.
                    logger.error("signing key %s: %s", row.kid, exc)
                    undecryptable = row.kid
            self._material[row.kid] = (private_key, public_key)
            verify_until = row.retired_at.timestamp() + window if row.state == SigningKeyState.RETIRED else None
            verifiers[row.kid] = Verifier(
                kid=row.kid,
                algorithm=row.algorithm,
                public_key=public_key,
                public_jwk=row.public_jwk,
                verify_until=verify_until,
            )
        ring = KeyRing(signer=signer, verifiers=verifiers, undecryptable=undecryptable)
        self._ring, self._loaded_at = ring, started
        return ring

    def signer(self) -> Signer:
        """The active key; created (race-safely) when there is none."""
        ring = self.ring()
        if ring.undecryptable is not None:
            raise SigningUnavailable()
        if ring.signer is None:
            signing_key_ensure_active()
            with self._lock:
                ring = self._load()
            if ring.signer is None:  # pragma: no cover - the row was just read back
                raise SigningKeyError("no active signing key")
        return ring.signer

    def verifier(self, kid: str) -> Verifier | None:
        """The key `kid` names, if it may verify now; None for unknown, revoked or expired-retired."""
        ring, reloaded = self._ring_and_reloaded()
        found = ring.verifiers.get(kid)
        if found is None:
            now = self.clock()
            if reloaded or now - self._unknown_reload_at < UNKNOWN_KID_RELOAD_SECONDS:
                return None
            self._unknown_reload_at = now
            with self._lock:
                found = self._load().verifiers.get(kid)
            if found is None:
                return None
        return found if found.usable(time.time()) else None

    def jwks(self) -> dict:
        """{"keys": [...]}: the public JWK of every key that may verify (active, standby, recently retired)."""
        now = time.time()
        return {"keys": [dict(key.public_jwk) for key in self.ring().verifiers.values() if key.usable(now)]}


keys = KeyStore()
