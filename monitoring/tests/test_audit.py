"""The audit trail of auth events (ASVS 16.3.1): one row per event, cheap on the request path,
read-only in the admin."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import RefreshToken
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import signing_keys_warm
from monitoring import audit
from monitoring.models import AuditEvent

pytestmark = pytest.mark.django_db(transaction=False)

SIGNUP = "/api/v1/auth/signup"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
PASSWORD = "/api/v1/auth/password"
API_KEYS = "/api/v1/auth/api-keys"
CHANGELIST = "/admin/monitoring/auditevent/"
IP = "203.0.113.7"
UA = "VelroAuditTest/1.0 (+https://example.com)"
NEW_PASSWORD = "another fine passphrase 7"
STRONG = "violet tractor umbrella 42"
CLIENT_META = {"REMOTE_ADDR": IP, "HTTP_USER_AGENT": UA}


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def api_client() -> APIClient:
    """A client with a fixed address and user agent on every request."""
    return APIClient(**CLIENT_META)


def post(client: APIClient, path: str, data: dict | None = None):
    return client.post(path, data or {}, format="json")


def login_as(client: APIClient, user) -> dict:
    response = post(client, LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD})
    assert response.status_code == 200, response.content
    return response.json()


def bearer(client: APIClient, access_token: str) -> APIClient:
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token}")
    return client


def the_event(kind: str) -> AuditEvent:
    """Flush the buffer and return the single row of `kind`."""
    audit.flush()
    rows = list(AuditEvent.objects.filter(kind=kind))
    assert len(rows) == 1, [(row.kind, row.user_id) for row in AuditEvent.objects.all()]
    return rows[0]


def assert_context(event: AuditEvent, response, *, user_id: object) -> None:
    assert str(event.user_id) == str(user_id)
    assert event.ip == IP
    assert event.user_agent == UA
    assert event.request_id == response["X-Request-ID"]
    assert event.created_at is not None
    assert timezone.now() - timedelta(minutes=1) < event.created_at <= timezone.now()


# --- one row per event --------------------------------------------------------------------------


def test_signup_is_audited(api_client):
    response = post(api_client, SIGNUP, {"email": "audited@example.com", "password": STRONG})
    assert response.status_code == 201, response.content
    event = the_event(AuditEvent.Kind.SIGNUP)
    assert_context(event, response, user_id=response.json()["user"]["id"])


def test_login_success_is_audited(api_client, user):
    response = post(api_client, LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD})
    assert response.status_code == 200
    event = the_event(AuditEvent.Kind.LOGIN_SUCCESS)
    assert_context(event, response, user_id=user.pk)
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.LOGIN_FAILURE).count() == 0


def test_login_success_records_the_session(api_client, user):
    body = login_as(api_client, user)
    event = the_event(AuditEvent.Kind.LOGIN_SUCCESS)
    refresh_row = RefreshToken.objects.get(token_hash=hashlib.sha256(body["refresh_token"].encode()).hexdigest())
    assert event.detail == {"session": str(refresh_row.session_id)}


def test_login_failure_for_an_unknown_email_records_the_identifier_and_no_user(api_client):
    response = post(api_client, LOGIN, {"email": "ghost@example.com", "password": "whatever it is"})
    assert response.status_code == 401
    event = the_event(AuditEvent.Kind.LOGIN_FAILURE)
    assert event.identifier == "ghost@example.com"
    assert_context(event, response, user_id=None)
    assert event.user_id is None


def test_login_failure_for_a_wrong_password_is_audited(api_client, user):
    response = post(api_client, LOGIN, {"email": user.email, "password": "not the password"})
    assert response.status_code == 401
    event = the_event(AuditEvent.Kind.LOGIN_FAILURE)
    assert event.identifier == user.email
    assert event.request_id == response["X-Request-ID"]
    assert not AuditEvent.objects.filter(kind=AuditEvent.Kind.LOGIN_SUCCESS).exists()


def test_refresh_is_audited(api_client, user):
    first = login_as(api_client, user)
    response = post(api_client, REFRESH, {"refresh_token": first["refresh_token"]})
    assert response.status_code == 200, response.content
    event = the_event(AuditEvent.Kind.REFRESH)
    assert_context(event, response, user_id=user.pk)
    assert event.detail["session"]


def test_refresh_reuse_is_audited(api_client, user):
    first = login_as(api_client, user)
    assert post(api_client, REFRESH, {"refresh_token": first["refresh_token"]}).status_code == 200
    rotated = RefreshToken.objects.filter(token_hash=hashlib.sha256(first["refresh_token"].encode()).hexdigest())
    grace = django_settings.REFRESH_REUSE_GRACE_SECONDS
    assert rotated.update(rotated_at=timezone.now() - timedelta(seconds=grace + 5)) == 1

    response = post(api_client, REFRESH, {"refresh_token": first["refresh_token"]})
    assert response.status_code == 401
    event = the_event(AuditEvent.Kind.REFRESH_REUSE)
    assert_context(event, response, user_id=user.pk)
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.REFRESH).count() == 1  # only the first, good one


def test_an_unknown_refresh_token_is_not_audited_as_reuse(api_client):
    response = post(api_client, REFRESH, {"refresh_token": "r" * 43})
    assert response.status_code == 401
    audit.flush()
    assert not AuditEvent.objects.filter(kind=AuditEvent.Kind.REFRESH_REUSE).exists()


def test_logout_is_audited_with_its_scope(api_client, user):
    bearer(api_client, login_as(api_client, user)["access_token"])
    response = post(api_client, LOGOUT, {"scope": "global"})
    assert response.status_code == 204, response.content
    event = the_event(AuditEvent.Kind.LOGOUT)
    assert_context(event, response, user_id=user.pk)
    assert event.detail == {"scope": "global"}


def test_password_change_is_audited(api_client, user):
    bearer(api_client, login_as(api_client, user)["access_token"])
    response = post(api_client, PASSWORD, {"current_password": DEFAULT_PASSWORD, "new_password": NEW_PASSWORD})
    assert response.status_code == 204, response.content
    event = the_event(AuditEvent.Kind.PASSWORD_CHANGE)
    assert_context(event, response, user_id=user.pk)


def test_a_refused_password_change_is_not_audited_as_a_change(api_client, user):
    bearer(api_client, login_as(api_client, user)["access_token"])
    response = post(api_client, PASSWORD, {"current_password": "not the password", "new_password": NEW_PASSWORD})
    assert response.status_code in (400, 401, 403)
    audit.flush()
    assert not AuditEvent.objects.filter(kind=AuditEvent.Kind.PASSWORD_CHANGE).exists()


def test_api_key_creation_and_revocation_are_audited(api_client, user):
    bearer(api_client, login_as(api_client, user)["access_token"])
    created = post(api_client, API_KEYS, {"name": "ci"})
    assert created.status_code == 201, created.content
    key = created.json()
    event = the_event(AuditEvent.Kind.API_KEY_CREATED)
    assert_context(event, created, user_id=user.pk)
    assert event.detail == {"key": key["prefix"]}
    assert key["key"] not in str(event.detail)  # the secret never lands in the trail

    revoked = api_client.delete(f"{API_KEYS}/{key['id']}")
    assert revoked.status_code == 204, revoked.content
    event = the_event(AuditEvent.Kind.API_KEY_REVOKED)
    assert_context(event, revoked, user_id=user.pk)
    assert event.detail == {"key": key["id"]}


def test_every_event_of_a_session_is_one_row_each(api_client):
    signup = post(api_client, SIGNUP, {"email": "journey@example.com", "password": STRONG})
    assert signup.status_code == 201
    user_id = signup.json()["user"]["id"]
    post(api_client, LOGIN, {"email": "journey@example.com", "password": "wrong wrong wrong"})
    tokens = post(api_client, LOGIN, {"email": "journey@example.com", "password": STRONG}).json()
    tokens = post(api_client, REFRESH, {"refresh_token": tokens["refresh_token"]}).json()
    bearer(api_client, tokens["access_token"])
    assert post(api_client, LOGOUT, {"scope": "local"}).status_code == 204
    assert audit.flush() == 5
    kinds = sorted(AuditEvent.objects.values_list("kind", flat=True))
    assert kinds == sorted(["signup", "login_failure", "login_success", "refresh", "logout"])
    assert set(AuditEvent.objects.exclude(kind="login_failure").values_list("user_id", flat=True)) == {
        uuid.UUID(user_id)
    }
    assert len(set(AuditEvent.objects.values_list("request_id", flat=True))) == 5


# --- cheap on the request path -------------------------------------------------------------------


def test_login_with_auditing_stays_within_two_sql_statements(api_client, user):
    signing_keys_warm()  # a node's key set, reloaded once per JWT_SIGNING_KEYS_CACHE_SECONDS, not per login
    with CaptureQueriesContext(connection) as captured:
        response = post(api_client, LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD})
    assert response.status_code == 200
    sql = [q["sql"] for q in captured.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]
    assert len(sql) <= 2, sql
    assert not any("audit_events" in statement for statement in sql)
    assert [event.kind for event in audit.pending()] == [AuditEvent.Kind.LOGIN_SUCCESS]
    assert not AuditEvent.objects.exists()  # buffered, not written yet


def test_flush_writes_the_buffer_in_one_statement_and_empties_it(api_client):
    for n in range(3):
        post(api_client, LOGIN, {"email": f"nobody{n}@example.com", "password": "whatever it is"})
    assert len(audit.pending()) == 3
    with CaptureQueriesContext(connection) as captured:
        assert audit.flush() == 3
    inserts = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("INSERT")]
    assert len(inserts) == 1
    assert audit.pending() == []
    assert audit.flush() == 0
    assert AuditEvent.objects.count() == 3


def test_with_flush_seconds_zero_the_event_is_written_synchronously(api_client, user, settings):
    settings.AUDIT_FLUSH_SECONDS = 0
    response = post(api_client, LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD})
    assert response.status_code == 200
    assert audit.pending() == []
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.LOGIN_SUCCESS)  # no flush()
    assert event.request_id == response["X-Request-ID"]


def test_the_user_agent_is_truncated_to_the_column(api_client, user):
    response = api_client.post(
        LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json", HTTP_USER_AGENT="U" * 1000
    )
    assert response.status_code == 200
    assert the_event(AuditEvent.Kind.LOGIN_SUCCESS).user_agent == "U" * 256


def test_a_long_identifier_is_truncated_to_the_column():
    from django.test import RequestFactory

    audit.record(AuditEvent.Kind.LOGIN_FAILURE, RequestFactory().post(LOGIN), identifier="x" * 400)
    assert the_event(AuditEvent.Kind.LOGIN_FAILURE).identifier == "x" * 254


def test_the_client_ip_behind_a_trusted_proxy_is_the_forwarded_one(user, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    client = APIClient(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="198.51.100.1, 192.0.2.44")
    assert post(client, LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}).status_code == 200
    assert the_event(AuditEvent.Kind.LOGIN_SUCCESS).ip == "192.0.2.44"


# --- the admin -----------------------------------------------------------------------------------


@pytest.fixture
def admin_client_(client, db):
    staff = get_user_model().objects.create_superuser("auditor@example.com", "plum-harbour-velvet-42")
    client.force_login(staff)
    return client


@pytest.fixture
def some_events(api_client):
    user = UserFactory(email="trail@example.com")
    login_as(api_client, user)
    post(api_client, LOGIN, {"email": "intruder@example.com", "password": "guess guess"})
    audit.flush()
    return {
        "success": AuditEvent.objects.get(kind=AuditEvent.Kind.LOGIN_SUCCESS),
        "failure": AuditEvent.objects.get(kind=AuditEvent.Kind.LOGIN_FAILURE),
    }


def test_admin_changelist_renders_the_trail(admin_client_, some_events):
    response = admin_client_.get(CHANGELIST)
    assert response.status_code == 200
    rows = set(response.context["cl"].result_list)
    assert rows == set(some_events.values())
    assert b"intruder@example.com" in response.content
    assert some_events["success"].request_id.encode() in response.content


def test_admin_changelist_filters_by_kind(admin_client_, some_events):
    response = admin_client_.get(CHANGELIST, {"kind": "login_failure"})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [some_events["failure"]]
    response = admin_client_.get(CHANGELIST, {"kind": "login_success"})
    assert list(response.context["cl"].result_list) == [some_events["success"]]


def test_admin_search_by_request_id(admin_client_, some_events):
    response = admin_client_.get(CHANGELIST, {"q": some_events["failure"].request_id})
    assert list(response.context["cl"].result_list) == [some_events["failure"]]


def test_admin_has_no_add(admin_client_, some_events):
    changelist = admin_client_.get(CHANGELIST)
    assert f'href="{CHANGELIST}add/"'.encode() not in changelist.content
    assert admin_client_.get(f"{CHANGELIST}add/").status_code == 403
    assert admin_client_.post(f"{CHANGELIST}add/", {"kind": "signup"}).status_code == 403
    assert AuditEvent.objects.count() == 2


def test_admin_change_form_is_read_only(admin_client_, some_events):
    event = some_events["failure"]
    url = f"{CHANGELIST}{event.pk}/change/"
    page = admin_client_.get(url)
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert b'name="_continue"' not in page.content
    assert b"intruder@example.com" in page.content

    response = admin_client_.post(url, {"kind": "signup", "identifier": "tampered", "ip": "198.51.100.9"})
    assert response.status_code == 403
    event.refresh_from_db()
    assert event.kind == AuditEvent.Kind.LOGIN_FAILURE
    assert event.identifier == "intruder@example.com"


def test_admin_cannot_delete_events(admin_client_, some_events):
    event = some_events["failure"]
    assert admin_client_.post(f"{CHANGELIST}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    response = admin_client_.post(
        CHANGELIST, {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"}
    )
    assert response.status_code in (200, 302, 403)
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_admin_trail_is_not_for_anonymous_users(client, some_events):
    response = client.get(CHANGELIST)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_admin_trail_is_not_for_non_staff_users(client, some_events):
    client.force_login(UserFactory(email="viewer@example.com"))
    response = client.get(CHANGELIST)
    assert response.status_code == 302
    assert b"intruder@example.com" not in response.content
