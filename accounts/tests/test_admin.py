"""Django admin: the operator's window onto users, the mirror and sessions."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.admin.filters import DateFieldListFilter
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import PublicUser, RefreshToken, Session, User
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.test_users_sync import user_change_data
from accounts.tokens import access_token_decode

pytestmark = pytest.mark.django_db(transaction=False)

USERS = "/admin/accounts/user/"
SESSIONS = "/admin/accounts/session/"
MIRRORS = "/admin/accounts/publicuser/"
ME = "/api/v1/auth/me"
ADMIN_PASSWORD = "plum-harbour-velvet-42"


@pytest.fixture
def superuser(db):
    return User.objects.create_superuser("admin@example.com", ADMIN_PASSWORD)


@pytest.fixture
def admin(client, superuser):
    client.force_login(superuser)
    return client


def listed(response) -> set[str]:
    """Emails of the rows on a changelist page (what the operator sees)."""
    assert response.status_code == 200, response.content[:500]
    return {str(obj) for obj in response.context["cl"].result_list}


def row_of(html: str, email: str) -> str:
    """The changelist <tr> of one user."""
    match = re.search(r"<tr>((?:(?!</tr>).)*>" + re.escape(email) + r"<(?:(?!</tr>).)*)</tr>", html, re.S)
    assert match, f"no row for {email}"
    return match.group(1)


def set_role(user: User, role: str) -> None:
    PublicUser.objects.filter(pk=user.pk).update(role=role)


# --- users changelist -----------------------------------------------------------------------


def test_user_changelist_renders(admin):
    UserFactory(email="listed@example.com")
    response = admin.get(USERS)
    assert response.status_code == 200
    assert b"listed@example.com" in response.content
    assert {"listed@example.com", "admin@example.com"} <= listed(response)


def test_user_changelist_shows_the_mirror_role_column(admin):
    user = UserFactory(email="roled@example.com")
    set_role(user, "editor")
    UserFactory(email="plain-viewer@example.com")
    response = admin.get(USERS)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'column-role"' in html
    assert '<td class="field-role">editor</td>' in row_of(html, "roled@example.com")
    assert '<td class="field-role">viewer</td>' in row_of(html, "plain-viewer@example.com")


def test_user_search_by_email_finds_only_that_user(admin):
    UserFactory(email="needle@example.com")
    UserFactory(email="haystack@example.com")
    assert listed(admin.get(USERS, {"q": "needle@"})) == {"needle@example.com"}


def test_user_search_by_username_finds_only_that_user(admin):
    UserFactory(email="byname@example.com", username="zebra_rider")
    UserFactory(email="other@example.com", username="horse_rider")
    assert listed(admin.get(USERS, {"q": "zebra"})) == {"byname@example.com"}


def test_user_search_without_a_match_lists_nobody(admin):
    UserFactory(email="someone@example.com")
    assert listed(admin.get(USERS, {"q": "no-such-person"})) == set()


def test_user_changelist_filters_by_mirror_role(admin):
    editor = UserFactory(email="editor@example.com")
    set_role(editor, "editor")
    UserFactory(email="viewer@example.com")
    assert listed(admin.get(USERS, {"profile__role__exact": "editor"})) == {"editor@example.com"}
    viewers = listed(admin.get(USERS, {"profile__role__exact": "viewer"}))
    assert "viewer@example.com" in viewers
    assert "editor@example.com" not in viewers


def test_user_changelist_filters_by_is_active(admin):
    UserFactory(email="active@example.com")
    UserFactory(email="inactive@example.com", is_active=False)
    assert listed(admin.get(USERS, {"is_active__exact": "0"})) == {"inactive@example.com"}
    active = listed(admin.get(USERS, {"is_active__exact": "1"}))
    assert "active@example.com" in active
    assert "inactive@example.com" not in active


def test_user_changelist_filters_by_date_joined(admin):
    UserFactory(email="recent@example.com", date_joined=timezone.now() - timedelta(days=2))
    UserFactory(email="old@example.com", date_joined=timezone.now() - timedelta(days=60))
    # Follow the filter's own "Past 7 days" link, as an operator would.
    response = admin.get(USERS)
    date_filter = next(f for f in response.context["cl"].filter_specs if isinstance(f, DateFieldListFilter))
    params = dict(date_filter.links)["Past 7 days"]
    assert params
    recent = listed(admin.get(USERS, params))
    assert "recent@example.com" in recent
    assert "old@example.com" not in recent


def test_user_changelist_with_an_unknown_filter_value_does_not_crash(admin):
    response = admin.get(USERS, {"profile__role__exact": "nonsense"})
    assert response.status_code == 200
    assert listed(response) == set()


# --- user change page -----------------------------------------------------------------------


def test_user_change_page_shows_the_mirror_inline_with_its_role(admin):
    user = UserFactory(email="inline@example.com")
    set_role(user, "editor")
    response = admin.get(f"{USERS}{user.pk}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="profile-0-role"' in html
    assert '<option value="editor" selected>' in html
    assert 'name="profile-TOTAL_FORMS"' in html


def test_user_change_page_shows_the_sessions_inline(admin, login):
    user = UserFactory(email="sessions@example.com")
    login(user)
    login(user)  # a second session
    response = admin.get(f"{USERS}{user.pk}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="auth_sessions-group"' in html
    assert 'name="auth_sessions-TOTAL_FORMS" value="2"' in html
    for session in Session.objects.filter(user=user):
        assert str(session.pk) in html


def test_user_change_page_never_shows_the_password_hash(admin):
    user = UserFactory(email="secret@example.com")
    encoded = User.objects.get(pk=user.pk).password
    algorithm, *_, salt, hash_ = encoded.split("$")
    assert algorithm == "argon2"
    response = admin.get(f"{USERS}{user.pk}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    assert encoded not in html
    assert salt not in html
    assert hash_ not in html
    assert f"{salt}${hash_}" not in html
    assert "argon2" in html  # the summary (algorithm, masked salt) is what is shown


def test_deactivating_a_user_in_the_admin_ends_their_access_token_at_once(admin, auth_api, user):
    assert auth_api.get(ME).status_code == 200  # token works (and any cache is warm)
    response = admin.post(f"{USERS}{user.pk}/change/", user_change_data(admin, user, is_active=False))
    assert response.status_code == 302
    assert User.objects.get(pk=user.pk).is_active is False
    assert auth_api.get(ME).status_code == 401


def test_role_changed_in_the_admin_is_what_the_api_reports(admin, auth_api, user):
    assert auth_api.get(ME).json()["role"] == "viewer"  # warm any cache
    response = admin.post(f"{USERS}{user.pk}/change/", user_change_data(admin, user, role="editor"))
    assert response.status_code == 302
    assert PublicUser.objects.get(pk=user.pk).role == "editor"
    assert auth_api.get(ME).json()["role"] == "editor"


def test_user_change_page_of_an_unknown_user_redirects_with_a_message(admin):
    response = admin.get(f"{USERS}00000000-0000-0000-0000-000000000000/change/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/"


# --- sessions -------------------------------------------------------------------------------


def test_session_changelist_renders_without_token_hashes(admin, login):
    user = UserFactory(email="tokens@example.com")
    body = login(user)
    login(user)
    hashes = list(RefreshToken.objects.filter(session__user=user).values_list("token_hash", flat=True))
    assert len(hashes) == 2
    response = admin.get(SESSIONS)
    assert response.status_code == 200
    html = response.content.decode()
    assert "tokens@example.com" in html
    assert len(response.context["cl"].result_list) == 2
    for token_hash in hashes:
        assert token_hash not in html
    assert body["refresh_token"] not in html


def test_session_change_page_has_no_token_hash(admin, login):
    user = UserFactory()
    login(user)
    session = Session.objects.get(user=user)
    token_hash = RefreshToken.objects.get(session=session).token_hash
    response = admin.get(f"{SESSIONS}{session.pk}/change/")
    assert response.status_code == 200
    assert token_hash not in response.content.decode()


def test_revoke_sessions_action_revokes_only_the_selected_session(admin, api, login):
    user = UserFactory(email="revoke@example.com")
    revoked_tokens = login(user)
    kept_tokens = login(user)
    revoked_id = access_token_decode(revoked_tokens["access_token"]).session_id
    kept_id = access_token_decode(kept_tokens["access_token"]).session_id
    assert revoked_id != kept_id

    # Both access tokens work before the action (and any cache is warm).
    for tokens in (revoked_tokens, kept_tokens):
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access_token']}")
        assert api.get(ME).status_code == 200

    response = admin.post(
        SESSIONS, {"action": "revoke_sessions", "_selected_action": [str(revoked_id)], "index": "0"}, follow=True
    )
    assert response.status_code == 200
    assert "Revoked 1 session(s)." in [str(m) for m in response.context["messages"]]

    revoked = Session.objects.get(pk=revoked_id)
    assert revoked.revoked_at is not None
    assert revoked.revoked_reason == "admin"
    kept = Session.objects.get(pk=kept_id)
    assert kept.revoked_at is None
    assert kept.revoked_reason == ""

    api.credentials(HTTP_AUTHORIZATION=f"Bearer {revoked_tokens['access_token']}")
    assert api.get(ME).status_code == 401
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {kept_tokens['access_token']}")
    response = api.get(ME)
    assert response.status_code == 200
    assert response.json()["id"] == str(user.pk)


def test_revoke_sessions_action_ends_the_refresh_token_too(admin, api, login):
    user = UserFactory()
    tokens = login(user)
    session_id = access_token_decode(tokens["access_token"]).session_id
    admin.post(SESSIONS, {"action": "revoke_sessions", "_selected_action": [str(session_id)], "index": "0"})
    response = api.post("/api/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]}, format="json")
    assert response.status_code == 401


def test_revoke_sessions_action_keeps_the_first_revocation_reason(admin, login):
    user = UserFactory()
    login(user)
    session = Session.objects.get(user=user)
    first = timezone.now() - timedelta(hours=1)
    Session.objects.filter(pk=session.pk).update(revoked_at=first, revoked_reason="logout_local")
    response = admin.post(SESSIONS, {"action": "revoke_sessions", "_selected_action": [str(session.pk)], "index": "0"})
    assert response.status_code == 302
    session.refresh_from_db()
    assert (session.revoked_at, session.revoked_reason) == (first, "logout_local")


def test_sessions_cannot_be_added_from_the_admin(admin):
    assert admin.get(f"{SESSIONS}add/").status_code == 403


# --- public users (mirror) -------------------------------------------------------------------------


def test_public_user_changelist_renders_and_filters_by_role(admin):
    editor = UserFactory(email="m-editor@example.com")
    set_role(editor, "editor")
    UserFactory(email="m-viewer@example.com")
    response = admin.get(MIRRORS)
    assert {"m-editor@example.com", "m-viewer@example.com"} <= listed(response)
    assert listed(admin.get(MIRRORS, {"role__exact": "editor"})) == {"m-editor@example.com"}
    viewers = listed(admin.get(MIRRORS, {"role__exact": "viewer"}))
    assert "m-viewer@example.com" in viewers
    assert "m-editor@example.com" not in viewers


def test_public_users_cannot_be_added_from_the_admin(admin):
    assert admin.get(f"{MIRRORS}add/").status_code == 403


# --- access -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/admin/", USERS, SESSIONS, MIRRORS])
def test_anonymous_user_is_redirected_to_the_admin_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert f"next={path}" in response["Location"]


def test_non_staff_user_cannot_use_the_admin(client):
    client.force_login(UserFactory())
    response = client.get(USERS)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_admin_login_accepts_the_email_in_any_case(client, superuser):
    response = client.post(
        "/admin/login/", {"username": "ADMIN@EXAMPLE.COM", "password": ADMIN_PASSWORD, "next": "/admin/"}
    )
    assert response.status_code == 302, response.content[:500]
    assert response["Location"] == "/admin/"
    assert client.get(USERS).status_code == 200
    assert str(client.session["_auth_user_id"]) == str(superuser.pk)


def test_admin_login_with_a_wrong_password_fails(client, superuser):
    response = client.post("/admin/login/", {"username": "Admin@Example.com", "password": DEFAULT_PASSWORD})
    assert response.status_code == 200
    assert response.context["form"].errors
    assert "_auth_user_id" not in client.session
    assert client.get(USERS).status_code == 302


def test_admin_login_refuses_a_non_staff_user(client):
    UserFactory(email="plain@example.com")
    response = client.post("/admin/login/", {"username": "PLAIN@example.com", "password": DEFAULT_PASSWORD})
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


def test_a_user_added_from_the_admin_is_confirmed_and_signs_in(admin):
    response = admin.post(
        f"{USERS}add/",
        {
            "email": "added@example.com",
            "password1": "violet tractor 42 umbrella",
            "password2": "violet tractor 42 umbrella",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    added = User.objects.get(email="added@example.com")
    assert added.email_confirmed_at is not None  # the operator vouches for the address
    login = APIClient().post(
        "/api/v1/auth/login", {"email": "added@example.com", "password": "violet tractor 42 umbrella"}, format="json"
    )
    assert login.status_code == 200, login.content
