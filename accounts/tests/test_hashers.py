from __future__ import annotations

import itertools
import os

import pytest
from argon2 import Type
from argon2.low_level import hash_secret
from django.contrib.auth.hashers import check_password, make_password

from accounts import hashers
from accounts.hashers import Argon2idPasswordHasher, argon2_verify, sodium_verifies
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory

LOGIN = "/api/v1/auth/login"


def phc(password: str, *, time_cost=1, memory_cost=64, parallelism=1, salt_len=16, hash_len=32, type=Type.ID) -> str:
    """A PHC string made by argon2-cffi (the library Django's hasher uses)."""
    raw = hash_secret(
        password.encode(),
        os.urandom(salt_len),
        time_cost=time_cost,
        memory_cost=memory_cost,
        parallelism=parallelism,
        hash_len=hash_len,
        type=type,
    )
    return raw.decode("ascii")


@pytest.fixture
def sodium_calls(monkeypatch) -> list[bytes]:
    calls: list[bytes] = []
    original = hashers.crypto_pwhash_str_verify

    def spy(encoded: bytes, password: bytes) -> bool:
        calls.append(encoded)
        return original(encoded, password)

    monkeypatch.setattr(hashers, "crypto_pwhash_str_verify", spy)
    return calls


def test_a_hash_made_by_django_is_verified_by_libsodium(sodium_calls):
    encoded = make_password("correct horse battery")
    assert encoded.startswith("argon2$argon2id$v=19$m=19456,t=2,p=1$")
    assert check_password("correct horse battery", encoded)
    assert not check_password("correct horse batterz", encoded)
    assert len(sodium_calls) == 2


@pytest.mark.parametrize(
    ("time_cost", "memory_cost", "salt_len", "hash_len", "kind"),
    list(itertools.product([1, 3], [8, 1024], [8, 16, 22], [16, 32], [Type.ID, Type.I])),
)
def test_libsodium_and_argon2_cffi_agree_on_every_hash_libsodium_takes(
    time_cost, memory_cost, salt_len, hash_len, kind
):
    password = "pässword\x00with a NUL"
    encoded = phc(
        password, time_cost=time_cost, memory_cost=memory_cost, salt_len=salt_len, hash_len=hash_len, type=kind
    )
    assert sodium_verifies(encoded)
    assert argon2_verify(password, encoded) is True
    assert argon2_verify(password[:-1], encoded) is False
    assert argon2_verify("pässword", encoded) is False  # not cut at the NUL


@pytest.mark.parametrize(
    "encoded",
    [
        phc(DEFAULT_PASSWORD, parallelism=2),
        phc(DEFAULT_PASSWORD, type=Type.D),
        phc(DEFAULT_PASSWORD, salt_len=32, hash_len=64),  # longer than libsodium's 127 bytes
    ],
    ids=["two-lanes", "argon2d", "too-long-for-libsodium"],
)
def test_hashes_libsodium_does_not_take_are_still_verified_by_argon2_cffi(encoded, sodium_calls):
    assert not sodium_verifies(encoded)
    assert argon2_verify(DEFAULT_PASSWORD, encoded) is None
    hasher = Argon2idPasswordHasher()
    assert hasher.verify(DEFAULT_PASSWORD, "argon2" + encoded)
    assert not hasher.verify("something else", "argon2" + encoded)
    assert sodium_calls == []


def test_a_stored_hash_that_does_not_decode_is_a_failed_verify_not_an_error():
    encoded = phc(DEFAULT_PASSWORD)
    salt_and_hash = encoded.rsplit("$", 2)
    broken = "$".join([salt_and_hash[0], "!!not-base64!!", salt_and_hash[2]])
    assert Argon2idPasswordHasher().verify(DEFAULT_PASSWORD, "argon2" + broken) is False


@pytest.mark.django_db
def test_known_and_unknown_users_verify_with_the_same_library(api, sodium_calls):
    user = UserFactory()
    api.post(LOGIN, {"email": user.email, "password": "not it at all"}, format="json")
    api.post(LOGIN, {"email": "ghost@example.com", "password": "not it at all"}, format="json")
    # Equal work: both a real user's hash and the dummy hash go through libsodium.
    assert len(sodium_calls) == 2
    assert len(set(sodium_calls)) == 2
