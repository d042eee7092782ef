"""Assurance levels (accounts.mfa): what a session proved, kept by refresh, required by
sensitive operations. The factors that raise a session (TOTP, recovery codes, passkeys)
have their own tests; here the level itself."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from accounts import mfa, services
from accounts.models import FactorStatus, MfaFactor, Passkey, Session
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import ANON_KEY, bearer, supabase_project, token_claims

pytestmark = pytest.mark.django_db

REFRESH = "/api/v1/auth/refresh"
GOTRUE_TOKEN = "/auth/v1/token"


def native_claims(access_token: str) -> dict:
    return token_claims(access_token, audience=settings.JWT_AUDIENCE)


def verified_factor(user) -> MfaFactor:
    return MfaFactor.objects.create(user=user, friendly_name="phone", status=FactorStatus.VERIFIED)


def test_a_password_session_is_aal1_with_password_as_its_method(user, login):
    body = login(user)
    session = Session.objects.get(user=user)
    assert session.aal == "aal1"
    assert [entry["method"] for entry in session.amr] == ["password"]
    assert native_claims(body["access_token"])["aal"] == "aal1"


def test_elevating_raises_the_same_session_to_aal2_with_new_tokens(user, login):
    body = login(user)
    session = Session.objects.get(user=user)
    raised = mfa.session_elevate(user=user, session_id=session.pk, method="totp")
    assert raised.session_id == session.pk
    assert raised.aal == "aal2"
    assert [entry["method"] for entry in raised.amr] == ["password", "totp"]
    assert raised.refresh_token != body["refresh_token"]
    assert native_claims(raised.access_token)["aal"] == "aal2"
    assert Session.objects.get(pk=session.pk).aal == "aal2"
    assert Session.objects.filter(user=user).count() == 1


def test_a_refresh_keeps_the_sessions_level(api, user, login):
    login(user)
    session = Session.objects.get(user=user)
    raised = mfa.session_elevate(user=user, session_id=session.pk, method="totp")
    response = api.post(REFRESH, {"refresh_token": raised.refresh_token}, format="json")
    assert response.status_code == 200, response.content
    assert native_claims(response.json()["access_token"])["aal"] == "aal2"


def test_the_sessions_older_refresh_token_also_refreshes_at_the_raised_level(api, user, login):
    body = login(user)
    session = Session.objects.get(user=user)
    mfa.session_elevate(user=user, session_id=session.pk, method="totp")
    response = api.post(REFRESH, {"refresh_token": body["refresh_token"]}, format="json")
    assert response.status_code == 200, response.content
    assert native_claims(response.json()["access_token"])["aal"] == "aal2"


def test_an_ended_session_cannot_be_elevated(user, login):
    login(user)
    session = Session.objects.get(user=user)
    services.session_revoke(session_ids=[session.pk], reason="logout")
    with pytest.raises(mfa.SessionNotFound):
        mfa.session_elevate(user=user, session_id=session.pk, method="totp")


def test_another_users_session_cannot_be_elevated(user, login):
    login(user)
    session = Session.objects.get(user=user)
    with pytest.raises(mfa.SessionNotFound):
        mfa.session_elevate(user=UserFactory(), session_id=session.pk, method="totp")


def test_an_expired_session_cannot_be_elevated(user, login):
    login(user)
    Session.objects.filter(user=user).update(expires_at=timezone.now() - timedelta(seconds=1))
    session = Session.objects.get(user=user)
    with pytest.raises(mfa.SessionNotFound):
        mfa.session_elevate(user=user, session_id=session.pk, method="totp")


def test_without_a_second_factor_aal1_is_enough_for_sensitive_operations(user, login):
    login(user)
    session = Session.objects.get(user=user)
    mfa.aal_require(user_id=user.pk, session_id=session.pk)  # does not raise


@pytest.mark.parametrize("second_factor", ["totp", "passkey"])
def test_with_a_second_factor_an_aal1_session_is_refused_and_an_aal2_one_allowed(user, login, second_factor):
    login(user)
    session = Session.objects.get(user=user)
    if second_factor == "totp":
        verified_factor(user)
    else:
        Passkey.objects.create(user=user, credential_id=b"credential", public_key=b"key")
    with pytest.raises(mfa.InsufficientAal):
        mfa.aal_require(user_id=user.pk, session_id=session.pk)
    mfa.session_elevate(user=user, session_id=session.pk, method="totp")
    mfa.aal_require(user_id=user.pk, session_id=session.pk)


def test_an_unverified_factor_is_not_a_second_factor(user):
    MfaFactor.objects.create(user=user, friendly_name="pending", status=FactorStatus.UNVERIFIED)
    assert not mfa.user_has_second_factor(user_id=user.pk)
    assert mfa.next_level(user_id=user.pk) == "aal1"


def test_an_api_key_never_counts_as_aal2(user):
    verified_factor(user)
    with pytest.raises(mfa.InsufficientAal):
        mfa.aal_require(user_id=user.pk, session_id=None)


def test_the_password_change_answers_insufficient_aal_at_aal1_for_a_user_with_a_factor(user, login):
    body = login(user)
    verified_factor(user)
    response = bearer(body["access_token"]).post(
        "/api/v1/auth/password", {"current_password": "x", "new_password": "y"}, format="json"
    )
    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_aal"


def test_gotrue_tokens_carry_the_sessions_level_and_methods_newest_first(api, settings, user):

    supabase_project(settings)
    response = api.post(
        f"{GOTRUE_TOKEN}?grant_type=password",
        {"email": user.email, "password": DEFAULT_PASSWORD},
        format="json",
        HTTP_APIKEY=ANON_KEY,
    )
    assert response.status_code == 200, response.content
    session = Session.objects.get(user=user)
    mfa.session_elevate(user=user, session_id=session.pk, method="totp")
    refreshed = api.post(
        f"{GOTRUE_TOKEN}?grant_type=refresh_token",
        {"refresh_token": response.json()["refresh_token"]},
        format="json",
        HTTP_APIKEY=ANON_KEY,
    )
    assert refreshed.status_code == 200, refreshed.content
    claims = token_claims(refreshed.json()["access_token"], audience=settings.GOTRUE_JWT_AUDIENCE)
    assert claims["aal"] == "aal2"
    assert [entry["method"] for entry in claims["amr"]] == ["totp", "password"]
