"""Operators and second factors: the user page's read-only factor and passkey
inlines (never a secret), the recovery codes left, the "Reset MFA" action and
the mfa_reset command (factors, passkeys, codes gone; every session ended;
audited), and the admin sign-in's second step through the real login form."""

from __future__ import annotations

import re

import pyotp
import pytest
from django.core.management import CommandError, call_command

from accounts import recovery
from accounts.models import MfaFactor, Passkey, RecoveryCode, Session, User, WebAuthnChallenge
from accounts.tests.factories import DEFAULT_PASSWORD, MfaFactorFactory, PasskeyFactory, UserFactory
from accounts.tests.support import bearer
from monitoring import audit
from monitoring.models import AuditEvent

USERS = "/admin/accounts/user/"
LOGIN = "/admin/login/?next=/admin/"
ME = "/api/v1/auth/me"
SECRET_MARKER = "gAAAAA-ciphertext-of-the-totp-secret"
KEY_MARKER = b"public-key-bytes-never-shown"

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client):
    user = User.objects.create_superuser("operator@example.com", DEFAULT_PASSWORD)
    client.force_login(user)
    return client


@pytest.fixture
def member(login):
    """A user with a TOTP factor, a passkey, recovery codes and two live sessions."""
    user = UserFactory(email="member@example.com")
    MfaFactorFactory(user=user, friendly_name="Work phone", secret_encrypted=SECRET_MARKER, last_step=59_000_000)
    PasskeyFactory(user=user, friendly_name="YubiKey 5", public_key=KEY_MARKER, sign_count=42)
    user.codes = recovery.recovery_codes_generate(user_id=user.pk)
    user.tokens = [login(user)["access_token"] for _ in range(2)]
    return user


def _gone(user: User) -> bool:
    return not (
        MfaFactor.objects.filter(user=user).exists()
        or Passkey.objects.filter(user=user).exists()
        or RecoveryCode.objects.filter(user=user).exists()
    )


# --- the user page ----------------------------------------------------------------------------


def test_the_user_page_lists_factors_and_passkeys_without_any_secret(operator, member):
    recovery.recovery_code_use(user_id=member.pk, code=member.codes[0])
    response = operator.get(f"{USERS}{member.pk}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Work phone" in html and "YubiKey 5" in html and "42" in html
    assert "00000000-0000-0000-0000-000000000000" in html  # the passkey's aaguid
    assert SECRET_MARKER not in html
    assert KEY_MARKER.decode() not in html
    assert "secret_encrypted" not in html and "public_key" not in html and "credential_id" not in html
    assert re.search(r"recovery codes remaining:</label>\s*<div class=\"readonly\">9</div>", html, re.I), html


def test_the_inlines_cannot_add_change_or_delete(operator, member):
    response = operator.get(f"{USERS}{member.pk}/change/")
    for formset in response.context["inline_admin_formsets"]:
        if formset.opts.model in (MfaFactor, Passkey):
            assert not formset.has_add_permission and not formset.has_change_permission
            assert not formset.has_delete_permission


# --- reset ---------------------------------------------------------------------------------


def test_the_reset_action_removes_every_factor_and_ends_every_session(operator, member):
    bystander = UserFactory()
    MfaFactorFactory(user=bystander)
    WebAuthnChallenge.objects.create(user=member, kind="registration", challenge=b"x", expires_at=member.date_joined)
    response = operator.post(USERS, {"action": "reset_mfa", "_selected_action": [str(member.pk)]}, follow=True)
    assert response.status_code == 200
    assert "Reset the second factors of 1 user(s)." in response.content.decode()
    assert _gone(member) and not WebAuthnChallenge.objects.filter(user=member).exists()
    assert MfaFactor.objects.filter(user=bystander).exists()
    assert not Session.objects.filter(user=member, revoked_at__isnull=True).exists()
    assert set(Session.objects.filter(user=member).values_list("revoked_reason", flat=True)) == {"mfa_reset"}
    for token in member.tokens:
        assert bearer(token).get(ME).status_code == 401
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.MFA_RESET)
    assert event.user_id == member.pk
    assert event.detail == {
        "actor": "admin:operator@example.com",
        "factors": "1",
        "passkeys": "1",
        "recovery_codes": "10",
        "sessions": "2",
    }


def test_the_command_resets_a_user_by_email(member, capsys):
    call_command("mfa_reset", "MEMBER@example.com")
    assert _gone(member)
    assert not Session.objects.filter(user=member, revoked_at__isnull=True).exists()
    assert "removed 1 TOTP factor(s), 1 passkey(s), 10 unused recovery code(s); ended 2 session(s)" in (
        capsys.readouterr().out
    )
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.MFA_RESET)
    assert event.detail["actor"].startswith("cli:") and event.user_id == member.pk


def test_the_command_refuses_an_unknown_email():
    with pytest.raises(CommandError, match="no user"):
        call_command("mfa_reset", "nobody@example.com")


def test_after_a_reset_the_user_signs_in_with_the_password_alone(member, login):
    call_command("mfa_reset", member.email)
    tokens = login(member)
    assert bearer(tokens["access_token"]).post("/api/v1/auth/api-keys", {"name": "k"}, format="json").status_code == 201


# --- the admin sign-in's second step ----------------------------------------------------------


@pytest.fixture
def staff(db):
    """A staff user with a second factor and recovery codes."""
    user = User.objects.create_superuser("staff-mfa@example.com", DEFAULT_PASSWORD)
    user.totp_secret = pyotp.random_base32()
    MfaFactorFactory(user=user, secret=user.totp_secret)
    user.codes = recovery.recovery_codes_generate(user_id=user.pk)
    return user


def _sign_in(client, email: str, code: str | None = None):
    data = {"username": email, "password": DEFAULT_PASSWORD, "next": "/admin/"}
    if code is not None:
        data["otp_code"] = code
    return client.post(LOGIN, data)


def _signed_in(client) -> bool:
    return client.get("/admin/").status_code == 200


def test_the_login_page_asks_for_the_code(client):
    html = client.get(LOGIN).content.decode()
    assert 'name="otp_code"' in html and "Authenticator or recovery code" in html


def test_staff_without_a_second_factor_sign_in_with_the_password(client):
    User.objects.create_superuser("plain-staff@example.com", DEFAULT_PASSWORD)
    response = _sign_in(client, "plain-staff@example.com")
    assert response.status_code == 302 and _signed_in(client)


def test_a_second_factor_user_without_a_code_is_asked_for_it(client, staff):
    response = _sign_in(client, staff.email)
    assert response.status_code == 200
    assert "Enter the code from your authenticator app" in response.content.decode()
    assert not _signed_in(client)


def test_a_wrong_code_is_refused_audited_and_counted_as_a_failed_login(client, staff, settings):
    settings.RATELIMIT_LOGIN_FAILURES_ACCOUNT_IP = (2, 300)
    for _ in range(2):
        response = _sign_in(client, staff.email, "wrong-codes")
        assert "Invalid authenticator or recovery code" in response.content.decode()
    assert not _signed_in(client)
    assert [e.kind for e in audit.pending()].count(AuditEvent.Kind.MFA_VERIFY_FAILURE) == 2
    # The account's budget is spent: even the right code is not tried now.
    refused = _sign_in(client, staff.email, staff.codes[0])
    assert refused.status_code == 403 or "correct email" in refused.content.decode().lower()
    assert recovery.recovery_codes_remaining(user_id=staff.pk) == 10


def test_a_wrong_six_digit_code_proves_nothing(client, staff):
    response = _sign_in(client, staff.email, "123456")
    assert "Invalid authenticator or recovery code" in response.content.decode()


def test_a_recovery_code_completes_the_sign_in_once(client, staff):
    response = _sign_in(client, staff.email, staff.codes[0].upper())
    assert response.status_code == 302 and _signed_in(client)
    assert recovery.recovery_codes_remaining(user_id=staff.pk) == 9
    kinds = {e.kind: e.detail for e in audit.pending()}
    assert kinds[AuditEvent.Kind.RECOVERY_CODE_USED] == {"remaining": "9", "surface": "admin"}
    assert kinds[AuditEvent.Kind.LOGIN_SUCCESS] == {"surface": "admin", "amr": "recovery"}
    client.logout()
    again = _sign_in(client, staff.email, staff.codes[0])
    assert "Invalid authenticator or recovery code" in again.content.decode()


def test_a_totp_code_completes_the_sign_in_once(client, staff):
    code = pyotp.TOTP(staff.totp_secret).now()
    response = _sign_in(client, staff.email, code)
    assert response.status_code == 302 and _signed_in(client)
    client.logout()
    replayed = _sign_in(client, staff.email, code)
    assert "Invalid authenticator or recovery code" in replayed.content.decode()
    assert recovery.recovery_codes_remaining(user_id=staff.pk) == 10
