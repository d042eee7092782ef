"""The admin API's second-factor calls with the service-role key: the official
client's `auth.admin.mfa.list_factors / delete_factor`, and GoTrue's
/admin/users/{id}/passkeys (which the Python client does not wrap: plain HTTP)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from supabase_auth.errors import AuthError

from accounts import mfa, recovery
from accounts.models import FactorStatus, MfaFactor, Passkey, Session
from accounts.tests.factories import MfaFactorFactory, PasskeyFactory, UserFactory
from accounts.tests.support import ANON_KEY, api_login, supabase_project
from accounts.tests.support import SERVICE_ROLE_KEY as SERVICE_KEY
from monitoring import audit
from monitoring.models import AuditEvent

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _supabase_settings(settings):
    supabase_project(settings, service_role=True)
    settings.RATELIMIT_ENABLE = False


@pytest.fixture
def server(make_client):
    return make_client(apikey=SERVICE_KEY, bearer=SERVICE_KEY)


def _http(live_server, method: str, path: str, *, key: str = SERVICE_KEY, json: dict | None = None) -> httpx.Response:
    headers = {"apikey": key, "Authorization": f"Bearer {key}"}
    return httpx.request(method, f"{live_server.url}/auth/v1{path}", headers=headers, json=json, timeout=10)


def _events(kind: str) -> list[AuditEvent]:
    return [event for event in audit.pending() if event.kind == kind]


def test_server_code_lists_a_users_factors_without_their_secrets(server):
    user = UserFactory()
    verified = MfaFactorFactory(user=user, friendly_name="phone")
    pending = MfaFactorFactory(user=user, friendly_name="tablet", status=FactorStatus.UNVERIFIED)
    MfaFactorFactory()  # someone else's
    listed = server.admin.mfa.list_factors({"user_id": str(user.pk)})
    assert {(factor.id, factor.status) for factor in listed} == {
        (str(verified.pk), "verified"),
        (str(pending.pk), "unverified"),
    }
    assert all(factor.factor_type == "totp" for factor in listed)


def test_deleting_a_factor_lowers_the_sessions_it_raised_and_drops_the_last_codes(server, live_server):
    user = UserFactory()
    factor = MfaFactorFactory(user=user)
    recovery.recovery_codes_generate(user_id=user.pk)
    api_login(user.email)
    session = Session.objects.get(user=user)
    mfa.session_elevate(user=user, session_id=session.pk, method="totp", factor_id=factor.pk)
    deleted = server.admin.mfa.delete_factor({"user_id": str(user.pk), "id": str(factor.pk)})
    assert deleted.id == str(factor.pk)
    assert not MfaFactor.objects.filter(pk=factor.pk).exists()
    session.refresh_from_db()
    assert session.aal == "aal1" and session.revoked_at is None  # signed in still, one factor less
    assert [entry["method"] for entry in session.amr] == ["password"]
    assert recovery.recovery_codes_remaining(user_id=user.pk) == 0
    (event,) = _events(AuditEvent.Kind.MFA_FACTOR_UNENROLLED)
    assert event.user_id == user.pk and event.detail["actor"] == "service_role"


def test_an_unknown_user_or_factor_is_a_404_and_the_anon_key_a_403(server, live_server):
    user = UserFactory()
    with pytest.raises(AuthError) as unknown_factor:
        server.admin.mfa.delete_factor({"user_id": str(user.pk), "id": str(uuid.uuid4())})
    assert unknown_factor.value.code == "mfa_factor_not_found"
    with pytest.raises(AuthError) as unknown_user:
        server.admin.mfa.list_factors({"user_id": str(uuid.uuid4())})
    assert unknown_user.value.code == "user_not_found"
    for method, path in [
        ("GET", f"/admin/users/{user.pk}/factors"),
        ("DELETE", f"/admin/users/{user.pk}/factors/{uuid.uuid4()}"),
        ("GET", f"/admin/users/{user.pk}/passkeys"),
        ("DELETE", f"/admin/users/{user.pk}/passkeys/{uuid.uuid4()}"),
    ]:
        response = _http(live_server, method, path, key=ANON_KEY)
        assert (response.status_code, response.json()["error_code"]) == (403, "not_admin"), path


def test_server_code_lists_and_deletes_a_users_passkeys(live_server):
    user = UserFactory()
    laptop = PasskeyFactory(user=user, friendly_name="laptop")
    other = PasskeyFactory()
    listed = _http(live_server, "GET", f"/admin/users/{user.pk}/passkeys")
    assert listed.status_code == 200
    assert [item["id"] for item in listed.json()] == [str(laptop.pk)]
    assert "public_key" not in listed.json()[0] and "credential_id" not in listed.json()[0]
    # Another user's passkey under this user: not found, and kept.
    assert _http(live_server, "DELETE", f"/admin/users/{user.pk}/passkeys/{other.pk}").status_code == 404
    deleted = _http(live_server, "DELETE", f"/admin/users/{user.pk}/passkeys/{laptop.pk}")
    assert deleted.status_code == 204
    assert list(Passkey.objects.values_list("pk", flat=True)) == [other.pk]
    (event,) = _events(AuditEvent.Kind.PASSKEY_DELETED)
    assert event.user_id == user.pk and event.detail["actor"] == "service_role"


def test_the_service_role_renames_a_factor_and_names_stay_unique_per_user(live_server, server):
    user = UserFactory()
    factor = MfaFactorFactory(user=user, friendly_name="phone")
    MfaFactorFactory(user=user, friendly_name="tablet")
    MfaFactorFactory(friendly_name="laptop")  # someone else's name is free to take
    path = f"/admin/users/{user.pk}/factors/{factor.pk}"

    renamed = _http(live_server, "PUT", path, json={"friendly_name": " laptop "})
    assert renamed.status_code == 200, renamed.text
    assert (renamed.json()["id"], renamed.json()["friendly_name"]) == (str(factor.pk), "laptop")
    listed = server.admin.mfa.list_factors({"user_id": str(user.pk)})
    assert {item.friendly_name for item in listed} == {"laptop", "tablet"}
    assert _events(AuditEvent.Kind.ADMIN_USER_UPDATED)[0].detail["fields"] == "factor.friendly_name"

    taken = _http(live_server, "PUT", path, json={"friendly_name": "tablet"})
    assert (taken.status_code, taken.json()["error_code"]) == (422, "mfa_factor_name_conflict")
    blank = _http(live_server, "PUT", path, json={"friendly_name": ""})
    assert (blank.status_code, blank.json()["friendly_name"]) == (200, "laptop")  # nothing to change, as GoTrue
    elsewhere = _http(live_server, "PUT", f"/admin/users/{uuid.uuid4()}/factors/{factor.pk}", json={})
    assert (elsewhere.status_code, elsewhere.json()["error_code"]) == (404, "user_not_found")
    anon = _http(live_server, "PUT", path, key=ANON_KEY, json={"friendly_name": "x"})
    assert anon.status_code == 403
    assert MfaFactor.objects.get(pk=factor.pk).friendly_name == "laptop"
