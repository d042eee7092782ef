"""GoTrue's admin API (/auth/v1/admin/users...) through the official
supabase_auth client (its `admin` API, with the service-role key as apikey and
bearer, as supabase-py's server client sends it), against the live server."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient
from supabase_auth.errors import AuthError

from accounts import services
from accounts.gotrue.admin_views import go_duration
from accounts.models import ApiKey, Identity, PublicUser, Session, User
from accounts.revocations import feed as revocation_feed
from accounts.selectors import user_get
from accounts.services import api_key_create
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import ANON_KEY, STRONG, STRONGER, api_login, bearer, supabase_project
from accounts.tests.support import SERVICE_ROLE_KEY as SERVICE_KEY
from monitoring import audit
from monitoring.models import AuditEvent
from referrals.models import ReferralCode

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ADMIN = "/auth/v1/admin/users"
AUDIT = "/auth/v1/admin/audit"


@pytest.fixture(autouse=True)
def _supabase_settings(settings):
    supabase_project(settings, service_role=True)


@pytest.fixture
def server(make_client):
    """Server code: the service-role key as apikey and bearer."""
    return make_client(apikey=SERVICE_KEY, bearer=SERVICE_KEY)


@pytest.fixture
def browser(make_client):
    """A frontend: the anon key."""
    return make_client()


def _error(call) -> AuthError:
    """The client's error for a refused call (it carries GoTrue's status and code)."""
    with pytest.raises(AuthError) as caught:
        call()
    return caught.value


def _raw(live_server, method: str, path: str, *, key: str = SERVICE_KEY, bearer: str | None = None, **kwargs):
    """A plain HTTP call (what the client does not expose: headers, malformed bodies)."""
    headers = {"apikey": key, "Authorization": f"Bearer {bearer or key}", "X-Supabase-Api-Version": "2024-01-01"}
    headers.update(kwargs.pop("headers", {}))
    return httpx.request(method, f"{live_server.url}{path}", headers=headers, timeout=10, **kwargs)


def _admin_events(kind: str) -> list[AuditEvent]:
    return [event for event in audit.pending() if event.kind == kind]


# --- list ---------------------------------------------------------------------------------


def test_server_code_lists_users_newest_first_a_page_at_a_time(server):
    now = timezone.now()
    users = [UserFactory(date_joined=now - timedelta(minutes=index)) for index in range(5)]
    first = server.admin.list_users(page=1, per_page=2)
    assert [user.id for user in first] == [str(users[0].pk), str(users[1].pk)]
    last = server.admin.list_users(page=3, per_page=2)
    assert [user.id for user in last] == [str(users[4].pk)]
    assert server.admin.list_users(page=4, per_page=2) == []
    assert len(server.admin.list_users()) == 5  # GoTrue's default page: 50


def test_the_list_carries_gotrues_pagination_headers_and_audience(live_server):
    UserFactory.create_batch(5)
    response = _raw(live_server, "GET", f"{ADMIN}?page=2&per_page=2")
    assert response.status_code == 200
    assert response.headers["x-total-count"] == "5"
    assert response.headers["link"] == (
        f'<{ADMIN}?page=3&per_page=2>; rel="next", <{ADMIN}?page=3&per_page=2>; rel="last"'
    )
    assert response.json()["aud"] == "authenticated"
    assert len(response.json()["users"]) == 2
    last = _raw(live_server, "GET", f"{ADMIN}?page=3&per_page=2")
    assert last.headers["link"] == f'<{ADMIN}?page=3&per_page=2>; rel="last"'


def test_a_page_costs_the_same_three_queries_whatever_its_size(api):
    # The users, the count, and the provider identities of the whole page (prefetched).
    for user in UserFactory.create_batch(12, app_metadata={"provider": "acme", "providers": ["acme"]}):
        Identity.objects.create(user=user, provider="acme", provider_id=str(user.pk))
    counts = []
    for per_page in (2, 12):
        with CaptureQueriesContext(connection) as queries:
            response = api.get(f"{ADMIN}?per_page={per_page}", HTTP_APIKEY=SERVICE_KEY)
        assert response.status_code == 200 and len(response.json()["users"]) == per_page
        counts.append(len(queries))
    assert counts == [3, 3]


def test_per_page_is_bounded_and_bad_pagination_is_a_400(api):
    UserFactory()
    response = api.get(f"{ADMIN}?per_page=100000", HTTP_APIKEY=SERVICE_KEY)
    assert response.status_code == 200
    assert 'per_page=1000>; rel="last"' in response["Link"]
    for query in ("page=abc", "per_page=0", "page=0", "page=-1", "page=99999999999999999999"):
        refused = api.get(f"{ADMIN}?{query}", HTTP_APIKEY=SERVICE_KEY)
        assert (refused.status_code, refused.json()["error_code"]) == (400, "validation_failed"), query


# --- create -------------------------------------------------------------------------------


def test_server_code_creates_a_confirmed_user_with_metadata_who_then_signs_in(server, browser):
    created = server.admin.create_user(
        {
            "email": "Created@Example.com",
            "password": STRONG,
            "email_confirm": True,
            "user_metadata": {"full_name": "Ada Lovelace"},
            "app_metadata": {"plan": "pro"},
        }
    ).user
    assert created.email == "Created@example.com"
    assert created.email_confirmed_at is not None
    assert created.user_metadata == {"full_name": "Ada Lovelace"}
    assert created.app_metadata == {"provider": "email", "providers": ["email"], "plan": "pro"}
    assert created.banned_until is None
    row = User.objects.get(pk=created.id)
    assert row.password.startswith("argon2$argon2id$")
    assert row.display_name == "Ada Lovelace"
    assert PublicUser.objects.filter(pk=row.pk, email=row.email).exists()  # the mirror follows
    assert ReferralCode.objects.filter(user_id=row.pk).exists()  # as for every new user
    session = browser.sign_in_with_password({"email": "created@example.com", "password": STRONG}).session
    assert session.user.id == created.id


def test_create_without_email_confirm_leaves_the_address_unconfirmed_and_without_password_none_usable(server):
    created = server.admin.create_user({"email": "pending@example.com"}).user
    assert created.email_confirmed_at is None and created.confirmed_at is None
    row = User.objects.get(pk=created.id)
    assert row.email_confirmed_at is None
    assert not row.has_usable_password()


def test_create_with_a_custom_id_and_a_phone_only(server):
    wanted = uuid.uuid4()
    created = server.admin.create_user({"id": str(wanted), "phone": "+1 555 010 9999"}).user
    assert created.id == str(wanted)
    assert created.phone == "15550109999"
    assert created.email == ""  # GoTrue's user without an address
    refused = _error(lambda: server.admin.create_user({"phone": "15550109999"}))
    assert (refused.status, refused.code) == (422, "phone_exists")


def test_create_with_a_ban_duration_makes_a_banned_user(server, browser):
    created = server.admin.create_user(
        {"email": "banned-at-birth@example.com", "password": STRONG, "ban_duration": "1h30m"}
    ).user
    assert created.banned_until is not None
    until = User.objects.get(pk=created.id).banned_until
    assert timedelta(minutes=89) < until - timezone.now() <= timedelta(minutes=90)
    refused = _error(lambda: browser.sign_in_with_password({"email": created.email, "password": STRONG}))
    assert (refused.status, refused.code) == (400, "user_banned")


def test_the_address_is_unique_case_insensitively_like_signup(server):
    UserFactory(email="taken@example.com")
    refused = _error(lambda: server.admin.create_user({"email": "TAKEN@example.com", "password": STRONG}))
    assert (refused.status, refused.code) == (422, "email_exists")


def test_an_admin_set_password_goes_through_the_password_validators(server):
    weak = _error(lambda: server.admin.create_user({"email": "weak@example.com", "password": "123"}))
    assert (weak.status, weak.code) == (422, "weak_password")
    assert not User.objects.filter(email="weak@example.com").exists()
    user = UserFactory()
    weak = _error(lambda: server.admin.update_user_by_id(str(user.pk), {"password": "password"}))
    assert (weak.status, weak.code) == (422, "weak_password")


def test_bad_create_bodies_are_gotrues_400s_never_a_500(live_server):
    cases = [
        ({}, "Cannot create a user without either an email or phone"),
        ({"email": "not-an-address"}, "Unable to validate email address"),
        ({"email": "a@example.com", "ban_duration": "forever"}, "invalid format for ban duration"),
        ({"email": "a@example.com", "ban_duration": "99999999999h"}, "invalid format for ban duration"),
        ({"email": "a@example.com", "id": "not-a-uuid"}, "ID must conform to the uuid v4 format"),
        ({"email": "a@example.com", "user_metadata": ["a"]}, "user_metadata"),
        ({"email": 42}, "email"),
        ({"email": "a@example.com", "phone": "call me"}, "Invalid phone number format"),
        ({"email": "a@example.com", "role": "service_role"}, "role"),
        ({"email": "a@example.com", "password_hash": "$2a$10$abc"}, "password_hash"),
    ]
    for body, message in cases:
        response = _raw(live_server, "POST", ADMIN, json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["code"] == "validation_failed"
        assert message in response.json()["message"], (body, response.json())
    not_json = _raw(live_server, "POST", ADMIN, content=b"[1, 2]", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400
    assert not User.objects.exists()


# --- get ---------------------------------------------------------------------------------


def test_server_code_gets_a_user_by_id_and_an_unknown_or_malformed_id_is_a_404(server, live_server):
    user = UserFactory(email="got@example.com")
    got = server.admin.get_user_by_id(str(user.pk)).user
    assert (got.id, got.email) == (str(user.pk), "got@example.com")
    missing = _error(lambda: server.admin.get_user_by_id(str(uuid.uuid4())))
    assert (missing.status, missing.code) == (404, "user_not_found")
    malformed = _raw(live_server, "GET", f"{ADMIN}/not-a-uuid")
    assert (malformed.status_code, malformed.json()["code"]) == (404, "validation_failed")


# --- update -------------------------------------------------------------------------------


def test_server_code_updates_email_metadata_and_confirmation(server):
    user = UserFactory(email="before@example.com", user_metadata={"keep": 1, "drop": 2}, email_confirmed_at=None)
    updated = server.admin.update_user_by_id(
        str(user.pk),
        {
            "email": "after@example.com",
            "email_confirm": True,
            "user_metadata": {"drop": None, "added": "yes"},
            "app_metadata": {"roles": ["editor"]},
        },
    ).user
    assert updated.email == "after@example.com"
    assert updated.email_confirmed_at is not None
    assert updated.user_metadata == {"keep": 1, "added": "yes"}  # merged; null deletes (GoTrue's rule)
    assert updated.app_metadata["roles"] == ["editor"]
    assert PublicUser.objects.get(pk=user.pk).email == "after@example.com"
    assert user_get(user_id=user.pk).email == "after@example.com"  # no stale snapshot
    clash = UserFactory(email="other@example.com")
    refused = _error(lambda: server.admin.update_user_by_id(str(clash.pk), {"email": "AFTER@example.com"}))
    assert (refused.status, refused.code) == (422, "email_exists")
    missing = _error(lambda: server.admin.update_user_by_id(str(uuid.uuid4()), {"user_metadata": {}}))
    assert (missing.status, missing.code) == (404, "user_not_found")


def test_a_password_set_by_the_admin_ends_the_users_sessions_and_is_the_new_one(server, browser, make_client):
    user = UserFactory(email="reset@example.com")
    session = browser.sign_in_with_password({"email": user.email, "password": DEFAULT_PASSWORD}).session
    server.admin.update_user_by_id(str(user.pk), {"password": STRONGER})
    assert User.objects.get(pk=user.pk).password.startswith("argon2$argon2id$")
    refused = _error(lambda: browser.get_user(session.access_token))
    assert refused.status == 403
    other = make_client()
    assert other.sign_in_with_password({"email": user.email, "password": STRONGER}).session is not None


# --- bans ---------------------------------------------------------------------------------


def test_a_ban_ends_the_users_sessions_at_once_and_refuses_login_and_refresh(server, browser, make_client):
    user = UserFactory(email="ban@example.com")
    session = browser.sign_in_with_password({"email": user.email, "password": DEFAULT_PASSWORD}).session
    assert browser.get_user(session.access_token).user.id == str(user.pk)

    banned = server.admin.update_user_by_id(str(user.pk), {"ban_duration": "24h"}).user
    assert banned.banned_until is not None

    refused = _error(lambda: browser.get_user(session.access_token))
    assert refused.status == 403  # the access token is refused at once
    refresh = _error(lambda: make_client()._refresh_access_token(session.refresh_token))
    assert (refresh.status, refresh.code) == (400, "user_banned")
    login = _error(lambda: make_client().sign_in_with_password({"email": user.email, "password": DEFAULT_PASSWORD}))
    assert (login.status, login.code) == (400, "user_banned")
    # A wrong password is just that: the ban is shown only to whoever knows the password.
    wrong = _error(lambda: make_client().sign_in_with_password({"email": user.email, "password": "not it at all"}))
    assert wrong.code == "invalid_credentials"
    assert Session.objects.filter(user=user, revoked_at__isnull=True).count() == 0

    server.admin.update_user_by_id(str(user.pk), {"ban_duration": "none"})
    assert User.objects.get(pk=user.pk).banned_until is None
    assert make_client().sign_in_with_password({"email": user.email, "password": DEFAULT_PASSWORD}).session


def test_a_ban_refuses_the_native_login_and_the_users_api_keys_while_it_lasts(server, api, login):
    user = UserFactory()
    tokens = login(user)
    _, raw_key = api_key_create(user=user, name="ci")
    assert api.get("/api/v1/auth/me", HTTP_X_API_KEY=raw_key).status_code == 200
    server.admin.update_user_by_id(str(user.pk), {"ban_duration": "1h"})
    refused = api.post("/api/v1/auth/login", {"email": user.email, "password": DEFAULT_PASSWORD}, format="json")
    assert (refused.status_code, refused.json()["error"]) == (403, "user_banned")
    assert api.get("/api/v1/auth/me", HTTP_AUTHORIZATION=f"Bearer {tokens['access_token']}").status_code == 401
    assert api.get("/api/v1/auth/me", HTTP_X_API_KEY=raw_key).status_code == 401
    server.admin.update_user_by_id(str(user.pk), {"ban_duration": "none"})
    assert api.get("/api/v1/auth/me", HTTP_X_API_KEY=raw_key).status_code == 200  # a ban is not a revocation


def test_go_durations_parse_as_gotrue_parses_ban_duration():
    assert go_duration("24h") == timedelta(hours=24)
    assert go_duration("1h30m") == timedelta(minutes=90)
    assert go_duration("1.5h") == timedelta(minutes=90)
    assert go_duration("-10s") == timedelta(seconds=-10)
    assert go_duration("250ms") == timedelta(milliseconds=250)
    assert go_duration("0") == timedelta(0)
    for bad in ("", "10", "1d", "h", "1h 30m", "--1h", "3000000h"):
        with pytest.raises(ValueError):
            go_duration(bad)


# --- delete -------------------------------------------------------------------------------


def test_a_deleted_users_sessions_and_api_keys_end_and_their_rows_follow_the_cascades(server, browser):
    user = UserFactory(email="gone@example.com")
    session = browser.sign_in_with_password({"email": user.email, "password": DEFAULT_PASSWORD}).session
    api_key_create(user=user, name="ci")
    server.admin.delete_user(str(user.pk))
    assert not User.objects.filter(pk=user.pk).exists()
    assert not PublicUser.objects.filter(pk=user.pk).exists()
    assert not ReferralCode.objects.filter(user_id=user.pk).exists()
    assert not ApiKey.objects.filter(user_id=user.pk).exists()
    refused = _error(lambda: browser.get_user(session.access_token))
    assert refused.status == 403
    missing = _error(lambda: server.admin.delete_user(str(user.pk)))
    assert (missing.status, missing.code) == (404, "user_not_found")


def test_a_soft_delete_keeps_the_row_inactive_and_frees_the_address(server, browser, make_client):
    user = UserFactory(email="soft@example.com", user_metadata={"name": "x"})
    session = browser.sign_in_with_password({"email": user.email, "password": DEFAULT_PASSWORD}).session
    server.admin.delete_user(str(user.pk), should_soft_delete=True)
    row = User.objects.get(pk=user.pk)
    assert row.deleted_at is not None and not row.is_active
    assert not row.has_usable_password() and row.user_metadata == {}
    got = server.admin.get_user_by_id(str(user.pk)).user
    assert got.email == "" and got.deleted_at is not None
    assert _error(lambda: browser.get_user(session.access_token)).status == 403
    again = make_client().sign_up({"email": "soft@example.com", "password": STRONG})
    assert again.user.id != str(user.pk)


# --- admin sign-out and getUser(jwt) -----------------------------------------------------------


def test_server_code_signs_a_user_out_everywhere_with_their_token(server, browser, make_client):
    user = UserFactory(email="signout@example.com")
    first = browser.sign_in_with_password({"email": user.email, "password": DEFAULT_PASSWORD}).session
    second = make_client().sign_in_with_password({"email": user.email, "password": DEFAULT_PASSWORD}).session
    server.admin.sign_out(first.access_token, "global")
    for session in (first, second):
        assert _error(lambda session=session: browser.get_user(session.access_token)).status == 403
    refresh = _error(lambda: make_client()._refresh_access_token(second.refresh_token))
    assert refresh.code == "refresh_token_not_found"
    logouts = [event for event in audit.pending() if event.kind == AuditEvent.Kind.LOGOUT]
    assert logouts[-1].user_id == user.pk and logouts[-1].detail["scope"] == "global"
    assert logouts[-1].detail["actor"] == "service_role"


def test_server_code_reads_a_user_from_their_jwt_with_the_service_role_key(server, browser):
    user = UserFactory(email="jwt@example.com")
    session = browser.sign_in_with_password({"email": user.email, "password": DEFAULT_PASSWORD}).session
    assert server.get_user(session.access_token).user.id == str(user.pk)


# --- the audit trail ---------------------------------------------------------------------------


def test_the_audit_trail_lists_gotrues_entries_newest_first_and_filters_by_scope(server, live_server):
    created = server.admin.create_user({"email": "audited@example.com", "password": STRONG})
    server.admin.update_user_by_id(created.user.id, {"user_metadata": {"plan": "pro"}})
    audit.flush()
    response = _raw(live_server, "GET", f"{AUDIT}?per_page=1")
    assert response.status_code == 200
    assert response.headers["x-total-count"] == str(AuditEvent.objects.count())
    [newest] = response.json()
    assert newest["payload"]["action"] == "admin_user_updated"
    assert newest["payload"]["actor_id"] == "service_role"
    assert newest["payload"]["log_type"] == "admin"
    assert set(newest) == {"instance_id", "id", "payload", "created_at", "ip_address"}
    by_action = _raw(live_server, "GET", f"{AUDIT}?query=action:admin_user_created").json()
    assert [entry["payload"]["action"] for entry in by_action] == ["admin_user_created"]
    by_author = _raw(live_server, "GET", f"{AUDIT}?query=author:service_role").json()
    assert {entry["payload"]["action"] for entry in by_author} == {"admin_user_created", "admin_user_updated"}
    assert _raw(live_server, "GET", f"{AUDIT}?query=author:not-a-user-id").json() == []


def test_a_bad_audit_query_or_page_is_a_400_not_a_500(live_server):
    for query in ("query=nonsense", "query=colour:red", "page=0", "per_page=x"):
        response = _raw(live_server, "GET", f"{AUDIT}?{query}")
        assert (response.status_code, response.json()["code"]) == (400, "validation_failed"), query


# --- who may call it -------------------------------------------------------------------------


def test_the_anon_key_and_a_users_token_get_403_not_admin_on_every_admin_route(live_server, browser):
    user = UserFactory(email="notadmin@example.com")
    token = browser.sign_in_with_password({"email": user.email, "password": DEFAULT_PASSWORD}).session.access_token
    target = f"{ADMIN}/{user.pk}"
    routes = [("GET", ADMIN), ("POST", ADMIN), ("GET", target), ("PUT", target), ("DELETE", target)]
    routes.append(("GET", AUDIT))
    for method, path in routes:
        for credential in (ANON_KEY, token):
            body = {"email": "x@example.com"}
            response = _raw(live_server, method, path, key=ANON_KEY, bearer=credential, json=body)
            assert (response.status_code, response.json()["code"]) == (403, "not_admin"), (method, path)
    assert User.objects.get(pk=user.pk).email == "notadmin@example.com"
    assert User.objects.count() == 1


def test_the_official_client_with_the_anon_key_is_refused_as_not_admin(browser):
    refused = _error(lambda: browser.admin.list_users())
    assert (refused.status, refused.code) == (403, "not_admin")


# --- audit ---------------------------------------------------------------------------------


def test_every_admin_action_is_audited_with_the_service_role_and_the_target_never_the_password(server):
    created = server.admin.create_user({"email": "audited@example.com", "password": STRONG}).user
    server.admin.update_user_by_id(created.id, {"password": STRONGER, "user_metadata": {"a": 1}})
    server.admin.update_user_by_id(created.id, {"ban_duration": "2h"})
    server.admin.update_user_by_id(created.id, {"ban_duration": "none"})
    server.admin.delete_user(created.id)
    kinds = [
        AuditEvent.Kind.ADMIN_USER_CREATED,
        AuditEvent.Kind.ADMIN_USER_UPDATED,
        AuditEvent.Kind.ADMIN_USER_BANNED,
        AuditEvent.Kind.ADMIN_USER_UNBANNED,
        AuditEvent.Kind.ADMIN_USER_DELETED,
    ]
    for kind in kinds:
        events = _admin_events(kind)
        assert events, kind
        assert all(event.user_id == uuid.UUID(created.id) for event in events)
        assert all(event.detail["actor"] == "service_role" for event in events)
    assert _admin_events(AuditEvent.Kind.ADMIN_USER_UPDATED)[0].detail["fields"] == "password,user_metadata"
    for event in audit.pending():
        assert STRONG not in str(event.detail) and STRONGER not in str(event.detail)


# --- every node -------------------------------------------------------------------------------


def _another_node_cannot_reach_the_cache(monkeypatch) -> None:
    """What the next admin call writes reaches this process only as another node's
    would when that node cannot reach Redis: the rows and the feed, no cache deletes."""
    monkeypatch.setattr("accounts.revocations.tombstones_write", lambda kind, subjects: None)
    monkeypatch.setattr("accounts.services.session_cache_invalidate", lambda session_ids: None)
    monkeypatch.setattr("accounts.signals.user_cache_invalidate", lambda user_id: None)
    monkeypatch.setattr("accounts.services.user_cache_invalidate", lambda user_id: None)
    monkeypatch.setattr(revocation_feed, "note", lambda kind, subjects: None)


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["ban", "delete", "soft delete"])
def test_a_ban_or_delete_made_on_a_node_without_redis_reaches_the_others_through_the_feed(feed_on, monkeypatch, action):
    user = UserFactory()
    client = bearer(api_login(user.email)["access_token"])
    _, raw_key = api_key_create(user=user, name="ci")
    revocation_feed.poll()
    assert client.get("/api/v1/auth/me").status_code == 200  # "active", cached
    assert APIClient().get("/api/v1/auth/me", HTTP_X_API_KEY=raw_key).status_code == 200
    _another_node_cannot_reach_the_cache(monkeypatch)
    if action == "ban":
        services.admin_user_update(user_id=user.pk, banned_until=timezone.now() + timedelta(hours=1))
    else:
        services.admin_user_delete(user_id=user.pk, soft=action == "soft delete")
    monkeypatch.undo()
    assert client.get("/api/v1/auth/me").status_code == 200  # this node's stale cache, until its next poll
    feed_on.now += 0.5
    assert revocation_feed.poll() >= 1
    assert client.get("/api/v1/auth/me").status_code == 401
    assert APIClient().get("/api/v1/auth/me", HTTP_X_API_KEY=raw_key).status_code == 401


@pytest.mark.django_db
def test_a_ban_saved_by_any_path_ends_the_sessions_like_the_admin_apis():
    user = UserFactory()
    client = bearer(api_login(user.email)["access_token"])
    assert client.get("/api/v1/auth/me").status_code == 200
    user.banned_until = timezone.now() + timedelta(days=1)
    user.save()  # the Django admin's form, the shell
    assert Session.objects.get(user=user).revoked_reason == "banned"
    assert client.get("/api/v1/auth/me").status_code == 401
