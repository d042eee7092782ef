"""Asymmetric signing keys (accounts/signing.py): the store, rotation, the
multi-node key cache, legacy HS256, algorithm confusion, the signing_keys command.

The JWKS over HTTP and the official clients verifying from it: test_jwks.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import threading
from datetime import timedelta
from io import StringIO

import jwt
import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, OperationalError, connection, connections, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import signing, tokens
from accounts.gotrue.tokens import gotrue_jwt_key
from accounts.management.commands.signing_keys import Command as SigningKeysCommand
from accounts.models import SigningKey, SigningKeyState
from accounts.tests.factories import DEFAULT_PASSWORD
from accounts.tests.support import Clock, bearer, sign_token, signing_keys_warm, token_claims
from monitoring.models import AuditEvent
from velro.db import breaker as db_breaker

pytestmark = pytest.mark.django_db(transaction=False)

ME = "/api/v1/auth/me"
GOTRUE_USER = "/auth/v1/user"
GOTRUE_TOKEN = "/auth/v1/token?grant_type=password"
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi"}


@pytest.fixture(autouse=True)
def _no_anon_key(settings):
    settings.SUPABASE_ANON_KEY = ""


def both_tokens(user) -> tuple[str, str]:
    """(native access token, GoTrue access token) of two fresh sessions of `user`."""
    native = APIClient().post("/api/v1/auth/login", {"email": user.email, "password": DEFAULT_PASSWORD}, format="json")
    gotrue = APIClient().post(GOTRUE_TOKEN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json")
    assert native.status_code == 200 and gotrue.status_code == 200, (native.content, gotrue.content)
    return native.json()["access_token"], gotrue.json()["access_token"]


def accepted(native: str, gotrue: str) -> tuple[int, int]:
    """The status of /me with the native token and of /auth/v1/user with the GoTrue one."""
    return bearer(native).get(ME).status_code, bearer(gotrue).get(GOTRUE_USER).status_code


def kid_of(token: str) -> str:
    return jwt.get_unverified_header(token)["kid"]


def active_kid() -> str:
    return SigningKey.objects.get(state=SigningKeyState.ACTIVE).kid


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# --- the store ------------------------------------------------------------------------------


def test_the_first_signing_creates_one_active_es256_key_whose_kid_every_token_carries(user, caplog):
    caplog.set_level(logging.INFO, logger="velro.signing")
    assert not SigningKey.objects.exists()
    native, gotrue = both_tokens(user)
    key = SigningKey.objects.get()
    assert (key.state, key.algorithm) == (SigningKeyState.ACTIVE, "ES256")
    for token in (native, gotrue):
        assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": key.kid, "typ": "JWT"}
    assert accepted(native, gotrue) == (200, 200)
    assert f"no active signing key: created {key.kid} (ES256)" in caplog.messages
    assert not AuditEvent.objects.exists()  # the audit trail is what people did (the command)


def test_the_private_key_is_stored_encrypted_under_a_key_derived_from_secret_key(user):
    both_tokens(user)
    key = SigningKey.objects.get()
    assert b"PRIVATE KEY" not in key.private_key_encrypted.encode()
    fernet = Fernet(base64.urlsafe_b64encode(tokens.derived_key("signing-keys")))
    private_key = serialization.load_pem_private_key(fernet.decrypt(key.private_key_encrypted.encode()), None)
    # It is the private half of the published key: a token it signs verifies from the JWKS.
    token = jwt.encode({"aud": "x"}, private_key, algorithm="ES256", headers={"kid": key.kid})
    assert token_claims(token, audience="x") == {"aud": "x"}
    assert not PRIVATE_MEMBERS & set(key.public_jwk)


def test_a_key_encrypted_under_a_previous_secret_key_still_decrypts_from_the_fallbacks(user, settings):
    key = signing.signing_key_create_active()
    old_secret = settings.SECRET_KEY
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "a-brand-new-secret-key-" + "n" * 40, [old_secret]
    tokens.derived_key.cache_clear()
    try:
        assert signing._private_key_decrypt(key.private_key_encrypted) is not None
        settings.SECRET_KEY_FALLBACKS = []
        with pytest.raises(signing.SigningKeyError, match="SECRET_KEY_FALLBACKS"):
            signing._private_key_decrypt(key.private_key_encrypted)
    finally:
        settings.SECRET_KEY = old_secret
        tokens.derived_key.cache_clear()


def test_a_secret_key_changed_without_fallbacks_refuses_new_tokens_with_503_and_keeps_verifying(user, settings, login):
    body = login(user)  # signed with the active key under the current SECRET_KEY
    old_secret = settings.SECRET_KEY
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "a-brand-new-secret-key-" + "n" * 40, []
    tokens.derived_key.cache_clear()
    signing.keys.reset()  # a process started after the change: no decrypted key in memory
    try:
        assert bearer(body["access_token"]).get("/api/v1/auth/me").status_code == 200
        response = APIClient().post(
            "/api/v1/auth/login", {"email": user.email, "password": DEFAULT_PASSWORD}, format="json"
        )
        assert response.status_code == 503
        assert response.json()["error"] == "signing_key_unavailable"
        assert (
            SigningKey.objects.filter(state=SigningKeyState.ACTIVE).count() == 1
        )  # no key made behind the operator's back
        settings.SECRET_KEY_FALLBACKS = [old_secret]  # the operator's fix
        signing.keys.reset()
        assert login(user)["access_token"]
    finally:
        settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = old_secret, []
        tokens.derived_key.cache_clear()
        signing.keys.reset()


def test_the_database_refuses_a_second_active_key():
    signing.signing_key_create_active()
    second = signing._key_new(algorithm="ES256", state=SigningKeyState.ACTIVE)
    with pytest.raises(IntegrityError), transaction.atomic():
        second.save(force_insert=True)
    assert SigningKey.objects.filter(state=SigningKeyState.ACTIVE).count() == 1


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_two_processes_creating_the_first_key_at_once_end_with_one_active_key():
    # The forced interleaving: both have looked and found no active key, then
    # both insert one at the same moment. Each thread has its own connection.
    both_looked = threading.Barrier(2)
    results: list[str] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            assert not SigningKey.objects.filter(state=SigningKeyState.ACTIVE).exists()
            both_looked.wait(timeout=10)
            results.append(signing.signing_key_create_active().kid)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=create) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    active = SigningKey.objects.filter(state=SigningKeyState.ACTIVE)
    assert active.count() == 1
    assert results == [active.get().kid] * 2  # the loser signs with the winner's key
    assert SigningKey.objects.count() == 1


# --- rotation -------------------------------------------------------------------------------


def test_rotation_keeps_old_tokens_valid_and_revocation_ends_them(user):
    old_native, old_gotrue = both_tokens(user)
    old_kid = kid_of(old_native)
    standby = signing.signing_key_add()
    # Published before it signs; not signing yet.
    assert standby.kid in {jwk["kid"] for jwk in signing.keys.jwks()["keys"]}
    assert kid_of(both_tokens(user)[0]) == old_kid

    signing.signing_key_promote(kid=standby.kid)
    assert SigningKey.objects.get(kid=old_kid).state == SigningKeyState.RETIRED
    new_native, new_gotrue = both_tokens(user)
    assert kid_of(new_native) == kid_of(new_gotrue) == standby.kid
    assert accepted(old_native, old_gotrue) == (200, 200)  # retired, not expired: still valid
    tokens.verified_clear()
    assert accepted(old_native, old_gotrue) == (200, 200)  # and verified afresh, not only from the cache
    assert accepted(new_native, new_gotrue) == (200, 200)

    signing.signing_key_revoke(kid=old_kid)
    # The old tokens are in the verified-token cache: the revoked key still ends them.
    assert accepted(old_native, old_gotrue) == (401, 403)
    assert accepted(new_native, new_gotrue) == (200, 200)
    assert old_kid not in {jwk["kid"] for jwk in signing.keys.jwks()["keys"]}
    assert [event.detail["action"] for event in AuditEvent.objects.order_by("id")] == [
        "add",
        "retire",
        "promote",
        "revoke",
    ]


def test_a_retired_key_stops_verifying_once_its_tokens_can_no_longer_be_unexpired(user):
    old_native, old_gotrue = both_tokens(user)
    old_kid = kid_of(old_native)
    signing.signing_key_promote(kid=signing.signing_key_add().kid)
    window = settings.ACCESS_TOKEN_TTL_SECONDS + settings.JWT_LEEWAY_SECONDS
    SigningKey.objects.filter(kid=old_kid).update(retired_at=timezone.now() - timedelta(seconds=window + 1))
    signing.keys.invalidate()
    assert accepted(old_native, old_gotrue) == (401, 403)
    assert old_kid not in {jwk["kid"] for jwk in signing.keys.jwks()["keys"]}


def test_rs256_is_selectable_for_new_keys(user, settings):
    settings.JWT_SIGNING_ALGORITHM = "RS256"
    native, gotrue = both_tokens(user)
    assert jwt.get_unverified_header(native)["alg"] == jwt.get_unverified_header(gotrue)["alg"] == "RS256"
    assert SigningKey.objects.get().algorithm == "RS256"
    assert accepted(native, gotrue) == (200, 200)
    (jwk,) = signing.keys.jwks()["keys"]
    assert (jwk["kty"], jwk["alg"]) == ("RSA", "RS256")
    assert not PRIVATE_MEMBERS & set(jwk)
    assert token_claims(gotrue, audience="authenticated")["sub"] == str(user.pk)


def test_an_es256_key_can_be_rotated_to_an_rs256_one(user):
    old_native, _ = both_tokens(user)
    signing.signing_key_promote(kid=signing.signing_key_add(algorithm="RS256").kid)
    new_native, new_gotrue = both_tokens(user)
    assert jwt.get_unverified_header(new_native)["alg"] == "RS256"
    assert accepted(new_native, new_gotrue) == (200, 200)
    assert bearer(old_native).get(ME).status_code == 200


# --- legacy HS256 and algorithm confusion -----------------------------------------------------


def legacy_pair(native: str, gotrue: str) -> tuple[str, str]:
    """The same claims, HS256-signed with each surface's legacy secret (no kid)."""
    native_claims = token_claims(native, audience=settings.JWT_AUDIENCE)
    gotrue_claims = token_claims(gotrue, audience="authenticated")
    return (
        sign_token(native_claims, hs256_key=tokens.jwt_key()),
        sign_token(gotrue_claims, hs256_key=gotrue_jwt_key()),
    )


def test_hs256_tokens_of_the_legacy_secrets_verify_only_while_the_setting_allows(user, settings):
    legacy_native, legacy_gotrue = legacy_pair(*both_tokens(user))
    assert "kid" not in jwt.get_unverified_header(legacy_native)
    assert accepted(legacy_native, legacy_gotrue) == (200, 200)
    settings.JWT_LEGACY_HS256_VERIFY = False
    # Refused at once, although both were verified (and cached) a moment ago.
    assert accepted(legacy_native, legacy_gotrue) == (401, 403)


def test_an_hs256_token_signed_with_the_public_key_is_refused(user):
    # Key confusion: the public key (anyone can fetch it) used as an HMAC secret,
    # with the real kid, so a verifier that picks "the key for this kid" and
    # trusts the header's alg would accept it. PyJWT refuses to HMAC with a PEM,
    # so the token is built by hand.
    native, gotrue = both_tokens(user)
    public_key = signing.keys.verifier(kid_of(native)).public_key
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    forged = []
    for token, audience in ((native, settings.JWT_AUDIENCE), (gotrue, "authenticated")):
        header = {"alg": "HS256", "kid": kid_of(token), "typ": "JWT"}
        claims = token_claims(token, audience=audience)
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
        forged.append(f"{signing_input}.{b64url(signature)}")
    assert accepted(*forged) == (401, 403)


def test_a_token_whose_alg_is_not_its_keys_algorithm_is_refused(user):
    native, _ = both_tokens(user)
    claims = token_claims(native, audience=settings.JWT_AUDIENCE)
    rsa_key = signing._private_key_decrypt(signing._key_new(algorithm="RS256", state="standby").private_key_encrypted)
    # Signed with some RSA key, claiming the ES256 key's kid.
    forged = jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": kid_of(native)})
    assert bearer(forged).get(ME).status_code == 401


def test_unknown_and_missing_kids_are_refused(user):
    native, _ = both_tokens(user)
    claims = token_claims(native, audience=settings.JWT_AUDIENCE)
    private_key = signing._private_key_decrypt(SigningKey.objects.get().private_key_encrypted)
    for headers in ({"kid": "not-a-key"}, {}):
        forged = jwt.encode(claims, private_key, algorithm="ES256", headers=headers)
        assert bearer(forged).get(ME).status_code == 401


def test_me_on_a_warm_es256_token_runs_no_sql(user, django_assert_num_queries):
    native, gotrue = both_tokens(user)
    assert accepted(native, gotrue) == (200, 200)
    with django_assert_num_queries(0):
        assert accepted(native, gotrue) == (200, 200)


# --- the key cache of each process (node) ------------------------------------------------------


@pytest.fixture
def node_b():
    """A second node's key store: its own cache, its own clock, the same database."""
    return signing.KeyStore(clock=Clock())


def test_a_key_promoted_on_one_node_verifies_on_another_at_once(user, node_b, django_assert_num_queries):
    signing_keys_warm()
    assert node_b.verifier(active_kid()) is not None  # node B's cache is warm
    signing.signing_key_promote(kid=signing.signing_key_add().kid)  # on node A
    new_kid = kid_of(both_tokens(user)[0])
    with django_assert_num_queries(1):  # the unknown kid: one reload, then found
        assert node_b.verifier(new_kid) is not None


def test_unknown_kids_reload_the_keys_at_most_once_a_second(node_b, django_assert_num_queries):
    signing_keys_warm()
    node_b.verifier(active_kid())
    with django_assert_num_queries(1):
        assert node_b.verifier("made-up-1") is None
        assert node_b.verifier("made-up-2") is None  # within the second: no reload
    node_b.clock.now += signing.UNKNOWN_KID_RELOAD_SECONDS
    with django_assert_num_queries(1):
        assert node_b.verifier("made-up-3") is None


def test_a_revoked_key_stops_verifying_on_another_node_within_the_cache_ttl(user, node_b, settings):
    kid = kid_of(both_tokens(user)[0])
    assert node_b.verifier(kid) is not None
    signing.signing_key_revoke(kid=kid)  # on node A
    assert signing.keys.verifier(kid) is None  # at once where it was revoked
    node_b.clock.now += settings.JWT_SIGNING_KEYS_CACHE_SECONDS - 0.01
    assert node_b.verifier(kid) is not None  # the documented bound: node B may still trust it
    node_b.clock.now += 0.01
    assert node_b.verifier(kid) is None  # not a moment longer


def test_a_warm_token_is_still_accepted_while_the_keys_cannot_be_reloaded_from_the_database(user, settings):
    native, gotrue = both_tokens(user)
    assert accepted(native, gotrue) == (200, 200)  # keys loaded, sessions cached
    settings.DB_BREAKER_COOLDOWN_SECONDS = 60
    db_breaker.trip(OperationalError("database unreachable"))  # every query of a request is refused now
    signing.keys.clock.now += settings.JWT_SIGNING_KEYS_CACHE_SECONDS  # the key set is due for a reload
    tokens.verified_clear()  # the signatures are checked again, against the key set
    assert accepted(native, gotrue) == (200, 200)  # the last key set, not a 503 on every request
    signing.keys.reset()  # a process that never loaded the keys has nothing to fall back on
    assert accepted(native, gotrue) == (503, 503)


# --- the management command ----------------------------------------------------------------------


def run(*args: str) -> str:
    out = StringIO()
    call_command("signing_keys", *args, stdout=out)
    return out.getvalue().strip()


def test_the_command_adds_promotes_retires_revokes_and_lists():
    assert run("list") == "no signing keys yet (one is created at the first signing)"
    first = run("add").split()[1]
    second = run("add", "--algorithm", "RS256").split()[1]
    third = run("add").split()[1]
    assert run("promote", first) == f"promoted {first}: active, signing every new token"
    assert run("promote", second) == f"promoted {second}: active, signing every new token"
    assert run("retire", third) == f"retired {third}"
    assert run("revoke", first) == f"revoked {first} (was retired): its tokens no longer verify"
    assert dict(SigningKey.objects.values_list("kid", "state")) == {
        first: "revoked",
        second: "active",
        third: "retired",
    }
    lines = run("list").splitlines()
    assert [line.split()[:3] for line in lines] == [
        [first, "ES256", "revoked"],
        [second, "RS256", "active"],
        [third, "ES256", "retired"],
    ]
    actions = list(AuditEvent.objects.order_by("id").values_list("detail__action", "identifier"))
    assert [action for action, _ in actions] == [
        "add",
        "add",
        "add",
        "promote",
        "retire",
        "promote",
        "retire",
        "revoke",
    ]
    assert all(identifier.startswith("manage.py signing_keys") for _, identifier in actions)


def test_revoking_the_active_key_says_what_happens_next(user):
    kid = kid_of(both_tokens(user)[0])
    assert "no active key now" in run("revoke", kid)
    new_native, new_gotrue = both_tokens(user)  # a new key is created at the next signing
    assert kid_of(new_native) != kid
    assert accepted(new_native, new_gotrue) == (200, 200)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("promote", "{active}"), "cannot promote {active}: it is active (only a standby key can be promoted)"),
        (("retire", "{active}"), "cannot retire {active}: it is active (promote another key to retire it)"),
        (("promote", "{revoked}"), "cannot promote {revoked}: it is revoked (only a standby key can be promoted)"),
        (("revoke", "{revoked}"), "cannot revoke {revoked}: it is already revoked"),
        (("promote", "nope"), "no signing key nope"),
    ],
)
def test_invalid_transitions_exit_non_zero_with_a_message(args, message, capsys, monkeypatch):
    active = signing.signing_key_create_active().kid
    revoked = signing.signing_key_add().kid
    signing.signing_key_revoke(kid=revoked)
    states = dict(SigningKey.objects.values_list("kid", "state"))
    argv = [arg.format(active=active, revoked=revoked) for arg in args]
    with pytest.raises(CommandError, match="^" + re.escape(message.format(active=active, revoked=revoked))):
        call_command("signing_keys", *argv)
    # As a process: exit status 1, one line on stderr, no traceback. (The test's
    # transaction keeps its connection: run_from_argv closes them all.)
    monkeypatch.setattr(connections, "close_all", lambda: None)
    with pytest.raises(SystemExit) as exited:
        SigningKeysCommand().run_from_argv(["manage.py", "signing_keys", *argv])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.strip() == "CommandError: " + message.format(active=active, revoked=revoked)
    assert "Traceback" not in err
    assert dict(SigningKey.objects.values_list("kid", "state")) == states  # nothing changed


def test_an_unknown_algorithm_is_refused_by_the_command(capsys, monkeypatch):
    monkeypatch.setattr(connections, "close_all", lambda: None)
    with pytest.raises(SystemExit) as exited:
        SigningKeysCommand().run_from_argv(["manage.py", "signing_keys", "add", "--algorithm", "HS256"])
    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert not SigningKey.objects.exists()


def test_signing_on_a_warm_key_set_does_not_query_the_key_table(user):
    signing_keys_warm()
    with connection.execute_wrapper(_refuse_signing_key_queries):
        both_tokens(user)


def _refuse_signing_key_queries(execute, sql, params, many, context):
    assert "auth_signing_keys" not in sql, sql
    return execute(sql, params, many, context)
