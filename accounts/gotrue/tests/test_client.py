"""The official Supabase Auth client (supabase_auth, pinned in requirements-dev.txt)
against the live test server: what Velro's frontends and services run today.

live_server runs in a thread of this process; rate limits count per
127.0.0.1, so they are off here except where a limit is the subject.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.utils import timezone
from supabase_auth import SyncGoTrueClient
from supabase_auth.errors import AuthApiError, AuthInvalidCredentialsError, AuthWeakPasswordError

from accounts.models import RefreshToken, Session, User
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import STRONG, STRONGER, supabase_project, token_claims

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _supabase_settings(settings):
    supabase_project(settings)


def test_sign_up_then_get_user_with_the_session_it_returned(client):
    response = client.sign_up(
        {"email": "client@example.com", "password": STRONG, "options": {"data": {"full_name": "Grace Hopper"}}}
    )
    assert response.session is not None  # autoconfirm: signed in at once
    assert response.user.email == "client@example.com"
    assert response.user.user_metadata == {"full_name": "Grace Hopper"}
    assert response.user.app_metadata["provider"] == "email"
    assert response.user.email_confirmed_at is not None
    assert response.user.is_anonymous is False
    assert [identity.provider for identity in response.user.identities] == ["email"]
    got = client.get_user()
    assert got.user.id == response.user.id
    assert User.objects.get(pk=response.user.id).display_name == "Grace Hopper"


def test_sign_in_with_password_returns_a_session_whose_token_a_downstream_service_accepts(client):
    user = UserFactory(email="signin@example.com")
    response = client.sign_in_with_password({"email": "signin@example.com", "password": DEFAULT_PASSWORD})
    assert response.session.user.id == str(user.pk)
    assert response.session.token_type == "bearer"
    claims = token_claims(response.session.access_token, audience="authenticated")
    assert claims["sub"] == str(user.pk)
    assert claims["session_id"] == str(Session.objects.get(user=user).pk)
    assert client.get_session().access_token == response.session.access_token


def test_update_user_merges_metadata_and_changes_the_password(client, make_client):
    UserFactory(email="update@example.com")
    client.sign_in_with_password({"email": "update@example.com", "password": DEFAULT_PASSWORD})
    client.update_user({"data": {"theme": "dark"}})
    updated = client.update_user({"data": {"locale": "fr"}})
    assert updated.user.user_metadata == {"theme": "dark", "locale": "fr"}
    client.update_user({"password": STRONGER, "current_password": DEFAULT_PASSWORD})
    assert client.get_user().user.email == "update@example.com"  # this session survives the change
    fresh = make_client()
    with pytest.raises(AuthApiError):
        fresh.sign_in_with_password({"email": "update@example.com", "password": DEFAULT_PASSWORD})
    assert fresh.sign_in_with_password({"email": "update@example.com", "password": STRONGER}).session is not None
    assert User.objects.get(email="update@example.com").password.startswith("argon2$argon2id$")


def test_weak_password_raises_the_clients_weak_password_error(client):
    with pytest.raises(AuthWeakPasswordError) as raised:
        client.sign_up({"email": "weak@example.com", "password": "short"})
    assert raised.value.status == 422
    assert "length" in raised.value.reasons


def test_signing_up_a_taken_email_raises_user_already_exists(client):
    UserFactory(email="taken@example.com")
    with pytest.raises(AuthApiError) as raised:
        client.sign_up({"email": "taken@example.com", "password": STRONG})
    assert raised.value.code == "user_already_exists"
    assert raised.value.status == 422


@pytest.mark.parametrize("api_version", ["2024-01-01", ""])
def test_wrong_password_raises_the_clients_invalid_credentials_error(make_client, api_version):
    """Both error flavours: the client's default header (2024-01-01), and none."""
    client = make_client(headers={"X-Supabase-Api-Version": api_version})
    UserFactory(email="wrong@example.com")
    with pytest.raises((AuthApiError, AuthInvalidCredentialsError)) as raised:
        client.sign_in_with_password({"email": "wrong@example.com", "password": "not the password"})
    assert raised.value.code == "invalid_credentials"
    assert raised.value.status == 400
    assert raised.value.message == "Invalid login credentials"
    assert client.get_session() is None


def test_refresh_session_rotates_the_refresh_token(client):
    UserFactory(email="refresh@example.com")
    first = client.sign_in_with_password({"email": "refresh@example.com", "password": DEFAULT_PASSWORD}).session
    refreshed = client.refresh_session()
    assert refreshed.session.refresh_token != first.refresh_token
    assert refreshed.session.user.email == "refresh@example.com"
    assert client.get_session().refresh_token == refreshed.session.refresh_token
    assert client.get_user().user.email == "refresh@example.com"


def test_refresh_token_reuse_after_rotation_is_rejected_the_gotrue_way(client, make_client, settings):
    UserFactory(email="reuse@example.com")
    stolen = client.sign_in_with_password({"email": "reuse@example.com", "password": DEFAULT_PASSWORD}).session
    client.refresh_session()
    # Outside the grace window, as if the rotation happened a minute ago.
    digest = hashlib.sha256(stolen.refresh_token.encode()).hexdigest()
    RefreshToken.objects.filter(token_hash=digest).update(
        rotated_at=timezone.now() - timedelta(seconds=settings.REFRESH_REUSE_GRACE_SECONDS + 50)
    )
    attacker = make_client()
    with pytest.raises(AuthApiError) as raised:
        attacker.refresh_session(stolen.refresh_token)
    assert raised.value.code == "refresh_token_already_used"
    assert raised.value.status == 400
    # The whole family is revoked: the legitimate client's session ended too.
    assert Session.objects.get(user__email="reuse@example.com").revoked_reason == "refresh_reuse"
    with pytest.raises(AuthApiError) as legit:
        client.refresh_session()
    assert legit.value.code == "refresh_token_already_used"


def test_sign_out_ends_the_session_on_the_server(client, make_client):
    UserFactory(email="signout@example.com")
    session = client.sign_in_with_password({"email": "signout@example.com", "password": DEFAULT_PASSWORD}).session
    client.sign_out()
    assert client.get_session() is None
    assert Session.objects.get(user__email="signout@example.com").revoked_at is not None
    other = make_client()
    with pytest.raises(AuthApiError) as raised:
        other.get_user(session.access_token)
    assert raised.value.code == "session_not_found"
    assert raised.value.status == 403
    with pytest.raises(AuthApiError) as refresh:
        other.refresh_session(session.refresh_token)
    assert refresh.value.code == "refresh_token_not_found"


def test_sign_out_with_scope_others_keeps_this_session(client, make_client):
    UserFactory(email="others@example.com")
    phone = make_client()
    phone_session = phone.sign_in_with_password({"email": "others@example.com", "password": DEFAULT_PASSWORD})
    client.sign_in_with_password({"email": "others@example.com", "password": DEFAULT_PASSWORD})
    client.sign_out({"scope": "others"})
    assert client.get_user().user.email == "others@example.com"
    with pytest.raises(AuthApiError):
        make_client().get_user(phone_session.session.access_token)


def test_a_client_without_the_anon_key_is_refused(live_server):
    client = SyncGoTrueClient(url=f"{live_server.url}/auth/v1", auto_refresh_token=False)
    try:
        UserFactory(email="nokey@example.com")
        with pytest.raises(AuthApiError) as raised:
            client.sign_in_with_password({"email": "nokey@example.com", "password": DEFAULT_PASSWORD})
        assert raised.value.status == 401
    finally:
        client.close()


def test_the_client_reads_the_settings_and_health_endpoints(client):
    # Not wrapped by the client's public API: its own request helper, as it would call them.
    settings_body = client._request("GET", "settings").json()
    assert settings_body["external"]["email"] is True
    assert settings_body["mailer_autoconfirm"] is True
    assert client._request("GET", "health").json()["name"] == "GoTrue"
