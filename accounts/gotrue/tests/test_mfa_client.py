"""The official Python client's MFA API (supabase_auth: auth.mfa.*) against the live test server.

Codes are computed from the enrolled secret with pyotp, as an authenticator app would.
"""

from __future__ import annotations

import pytest
from supabase_auth.errors import AuthApiError

from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import STRONGER, supabase_project, token_claims, totp_code

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _supabase_settings(settings):
    supabase_project(settings)


def signed_in(client, email: str) -> None:
    client.sign_in_with_password({"email": email, "password": DEFAULT_PASSWORD})


def test_enroll_challenge_verify_reaches_aal2_and_refresh_keeps_it(client):
    UserFactory(email="mfa@example.com")
    signed_in(client, "mfa@example.com")
    level = client.mfa.get_authenticator_assurance_level()
    assert (level.current_level, level.next_level) == ("aal1", "aal1")
    enrolled = client.mfa.enroll({"factor_type": "totp", "friendly_name": "phone"})
    assert enrolled.totp.qr_code.startswith("data:image/svg+xml;utf-8,<svg")
    assert enrolled.friendly_name == "phone"
    listed = client.mfa.list_factors()
    assert [factor.id for factor in listed.all] == [enrolled.id] and listed.totp == []  # unverified
    challenge = client.mfa.challenge({"factor_id": enrolled.id})
    assert challenge.factor_type == "totp"
    verified = client.mfa.verify(
        {"factor_id": enrolled.id, "challenge_id": challenge.id, "code": totp_code(enrolled.totp.secret)}
    )
    claims = token_claims(verified.access_token, audience="authenticated")
    assert claims["aal"] == "aal2"
    assert sorted(entry["method"] for entry in claims["amr"]) == ["password", "totp"]
    level = client.mfa.get_authenticator_assurance_level()
    assert (level.current_level, level.next_level) == ("aal2", "aal2")
    assert sorted(method.method for method in level.current_authentication_methods) == ["password", "totp"]
    assert [factor.id for factor in client.mfa.list_factors().totp] == [enrolled.id]
    refreshed = client.refresh_session()
    assert token_claims(refreshed.session.access_token, audience="authenticated")["aal"] == "aal2"


def test_a_new_password_sign_in_is_aal1_with_next_level_aal2(client, make_client):
    UserFactory(email="next@example.com")
    signed_in(client, "next@example.com")
    enrolled = client.mfa.enroll({"factor_type": "totp"})
    client.mfa.challenge_and_verify({"factor_id": enrolled.id, "code": totp_code(enrolled.totp.secret)})
    other = make_client()
    signed_in(other, "next@example.com")
    level = other.mfa.get_authenticator_assurance_level()
    assert (level.current_level, level.next_level) == ("aal1", "aal2")


def test_replayed_and_wrong_codes_are_refused(client):
    UserFactory(email="replay@example.com")
    signed_in(client, "replay@example.com")
    enrolled = client.mfa.enroll({"factor_type": "totp"})
    code = totp_code(enrolled.totp.secret)
    client.mfa.challenge_and_verify({"factor_id": enrolled.id, "code": code})
    with pytest.raises(AuthApiError) as replay:
        client.mfa.challenge_and_verify({"factor_id": enrolled.id, "code": code})
    assert (replay.value.status, replay.value.code) == (422, "mfa_verification_failed")
    wrong = "000000" if totp_code(enrolled.totp.secret, steps=1) != "000000" else "111111"
    with pytest.raises(AuthApiError) as refused:
        client.mfa.challenge_and_verify({"factor_id": enrolled.id, "code": wrong})
    assert refused.value.code == "mfa_verification_failed"


def test_verify_attempts_are_rate_limited(client, settings):
    settings.RATELIMIT_ENABLE = True
    settings.RATELIMIT_MFA_VERIFY_FACTOR = (2, 60)
    UserFactory(email="limit@example.com")
    signed_in(client, "limit@example.com")
    enrolled = client.mfa.enroll({"factor_type": "totp"})
    for _ in range(2):
        with pytest.raises(AuthApiError):
            client.mfa.challenge_and_verify({"factor_id": enrolled.id, "code": "000000"})
    with pytest.raises(AuthApiError) as limited:
        client.mfa.challenge_and_verify({"factor_id": enrolled.id, "code": totp_code(enrolled.totp.secret)})
    assert (limited.value.status, limited.value.code) == (429, "over_request_rate_limit")


def test_sensitive_updates_need_aal2_and_unenroll_lowers_the_session(client, make_client):
    UserFactory(email="aal@example.com")
    signed_in(client, "aal@example.com")
    enrolled = client.mfa.enroll({"factor_type": "totp"})
    client.mfa.challenge_and_verify({"factor_id": enrolled.id, "code": totp_code(enrolled.totp.secret)})
    aal1 = make_client()
    signed_in(aal1, "aal@example.com")
    for change in ({"password": STRONGER, "current_password": DEFAULT_PASSWORD}, {"email": "new-aal@example.com"}):
        with pytest.raises(AuthApiError) as refused:
            aal1.update_user(change)
        assert (refused.value.status, refused.value.code) == (403, "insufficient_aal")
    with pytest.raises(AuthApiError) as unenroll_refused:
        aal1.mfa.unenroll({"factor_id": enrolled.id})
    assert unenroll_refused.value.code == "insufficient_aal"
    client.update_user({"password": STRONGER, "current_password": DEFAULT_PASSWORD})
    assert client.mfa.unenroll({"factor_id": enrolled.id}).id == enrolled.id
    client.refresh_session()
    level = client.mfa.get_authenticator_assurance_level()
    assert (level.current_level, level.next_level) == ("aal1", "aal1")
    assert client.mfa.list_factors().all == []
