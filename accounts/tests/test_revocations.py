"""Revocation is final: no interleaving leaves an "active" entry behind, the
PostgreSQL feed reaches processes whose cache is stale, and every path that
replaces a password ends the other sessions.

The races are forced, not hoped for: a hook runs the revocation between the
reader's database read and its cache write.
"""

from __future__ import annotations

import uuid

import pytest
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

from accounts import selectors, services
from accounts.models import Revocation, RevocationKind, Session, User
from accounts.revocations import RevocationFeed, feed, tombstone_key
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import Clock, api_login, bearer
from velro.cache import safe_cache
from velro.localcache import SharedEpoch

ME = "/api/v1/auth/me"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"


def login(user: User) -> dict:
    return api_login(user.email)


def run_between_read_and_cache_write(monkeypatch, action) -> None:
    """Run `action` once, after the selector read PostgreSQL, before it writes the cache."""
    original = safe_cache.set_many
    done = []

    def hooked(data, timeout=None):
        if not done and any(key.startswith(("session:", "apikey:")) for key in data):
            done.append(True)
            action()
        return original(data, timeout)

    monkeypatch.setattr(safe_cache, "set_many", hooked)
    return done


# --- the single-node race ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_logout_committing_between_a_cold_read_and_its_cache_write_is_not_undone(monkeypatch):
    user = UserFactory()
    tokens = login(user)
    other = login(user)
    session_id = uuid.UUID(str(Session.objects.filter(user=user).order_by("created_at").first().pk))

    def logout_from_elsewhere():
        services.session_logout(user_id=user.pk, session_id=uuid.UUID(_sid(other["access_token"])), scope="others")

    done = run_between_read_and_cache_write(monkeypatch, logout_from_elsewhere)
    # The reader read "active", the logout committed, then the reader cached "active".
    assert bearer(tokens["access_token"]).get(ME).status_code == 200
    assert done
    assert Session.objects.get(pk=session_id).revoked_at is not None
    for _ in range(3):  # warm or not: the session stays ended
        assert bearer(tokens["access_token"]).get(ME).status_code == 401


@pytest.mark.django_db(transaction=True)
def test_an_api_key_revoked_between_a_cold_read_and_its_cache_write_stays_revoked(monkeypatch):
    user = UserFactory()
    key, raw = services.api_key_create(user=user, name="ci")
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=raw)

    done = run_between_read_and_cache_write(monkeypatch, lambda: services.api_keys_revoke(key_ids=[key.pk]))
    assert client.get(ME).status_code == 200
    assert done
    for _ in range(3):
        assert client.get(ME).status_code == 401


def _sid(access_token: str) -> str:
    from accounts.tokens import access_token_decode

    return str(access_token_decode(access_token).session_id)


def _client_session(client: APIClient) -> uuid.UUID:
    return uuid.UUID(_sid(client._credentials["HTTP_AUTHORIZATION"].split()[1]))


# --- tombstones and negative entries -------------------------------------------------------------


@pytest.mark.django_db
def test_a_revocation_leaves_a_tombstone_that_outlives_the_entry(settings):
    user = UserFactory()
    tokens = login(user)
    sid = _sid(tokens["access_token"])
    services.session_logout(user_id=user.pk, session_id=uuid.UUID(sid), scope="local")
    assert safe_cache.get(tombstone_key(RevocationKind.SESSION, sid)) == 1
    assert Revocation.objects.filter(kind=RevocationKind.SESSION, subject=sid).exists()


@pytest.mark.django_db
def test_a_tombstone_makes_a_cached_active_entry_go_back_to_postgresql(django_assert_num_queries):
    user = UserFactory()
    client = bearer(login(user)["access_token"])
    assert client.get(ME).status_code == 200  # warm
    with django_assert_num_queries(0):
        assert client.get(ME).status_code == 200
    safe_cache.set(tombstone_key(RevocationKind.USER, str(user.pk)), 1)
    with django_assert_num_queries(1):  # the session row, not the cache
        assert client.get(ME).status_code == 200


# --- the revocation feed ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_revocation_this_node_could_not_put_in_the_cache_reaches_it_through_the_feed(feed_on, monkeypatch):
    user = UserFactory()
    client = bearer(login(user)["access_token"])
    feed.poll()
    assert client.get(ME).status_code == 200  # warm: "active" cached
    # Another node logs the session out while it cannot reach the cache:
    # only the row and the feed entry are written (and its own machine's epoch bumped).
    monkeypatch.setattr("accounts.revocations.tombstones_write", lambda kind, subjects: None)
    monkeypatch.setattr("accounts.services.session_cache_invalidate", lambda session_ids: None)
    monkeypatch.setattr("accounts.revocations.l1_epoch_bump", lambda: None)
    monkeypatch.setattr(feed, "note", lambda kind, subjects: None)  # the other node's own feed
    services.session_logout(user_id=user.pk, session_id=_client_session(client), scope="local")
    monkeypatch.undo()
    assert client.get(ME).status_code == 200  # the stale entry, until the next poll
    feed_on.now += 0.5
    assert feed.poll() == 1
    assert client.get(ME).status_code == 401


def _another_worker_of_this_machine(monkeypatch, settings):
    """Patch what a revocation made in this process writes into this process's
    own cache and feed: the writes of another worker (its own local-memory
    cache), which reach this one only through PostgreSQL and the machine's
    shared epoch (bumped through a mapping of its own)."""
    monkeypatch.setattr("accounts.revocations.tombstones_write", lambda kind, subjects: None)
    monkeypatch.setattr("accounts.services.session_cache_invalidate", lambda session_ids: None)
    monkeypatch.setattr("accounts.revocations.l1_epoch_bump", SharedEpoch(settings.AUTH_L1_EPOCH_PATH).bump)
    monkeypatch.setattr(feed, "note", lambda kind, subjects: None)


LOCAL_MEMORY_CACHE = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "own"}}


@pytest.mark.django_db
def test_with_a_cache_of_its_own_a_logout_made_by_another_worker_of_this_machine_is_final_here_at_once(
    feed_on, monkeypatch, settings, django_assert_num_queries
):
    """The embedded default (no Redis): the other worker's tombstone never
    reaches this worker's cache, and its poll may be up to an interval away."""
    settings.CACHES = LOCAL_MEMORY_CACHE
    bystander = bearer(login(UserFactory())["access_token"])
    user = UserFactory()
    client = bearer(login(user)["access_token"])
    feed.poll()
    assert client.get(ME).status_code == bystander.get(ME).status_code == 200  # both cached "active"
    with monkeypatch.context() as elsewhere:
        _another_worker_of_this_machine(elsewhere, settings)
        services.session_logout(user_id=user.pk, session_id=_client_session(client), scope="local")
    assert client.get(ME).status_code == 401  # no poll in between
    # Until this process has polled, nothing cached is trusted; after, the cache serves again.
    with django_assert_num_queries(1):
        assert bystander.get(ME).status_code == 200
    feed_on.now += 0.1
    feed.poll()
    with django_assert_num_queries(0):
        assert bystander.get(ME).status_code == 200


@pytest.mark.django_db
def test_with_a_shared_cache_another_workers_revocation_leaves_the_other_cached_sessions_trusted(
    feed_on, monkeypatch, settings, django_assert_num_queries
):
    """Redis holds the other worker's tombstone: the machine's epoch moving
    must not send every request to PostgreSQL until the next poll."""
    bystander = bearer(login(UserFactory())["access_token"])
    user = UserFactory()
    client = bearer(login(user)["access_token"])
    feed.poll()
    assert client.get(ME).status_code == bystander.get(ME).status_code == 200
    SharedEpoch(settings.AUTH_L1_EPOCH_PATH).bump()  # another worker revoked something
    with django_assert_num_queries(0):
        assert bystander.get(ME).status_code == 200


@pytest.mark.django_db
def test_a_process_whose_feed_lags_trusts_no_cached_active_entry(feed_on, django_assert_num_queries):
    user = UserFactory()
    client = bearer(login(user)["access_token"])
    feed.poll()
    client.get(ME)
    with django_assert_num_queries(0):
        assert client.get(ME).status_code == 200
    feed_on.now += 1.01  # no good poll for longer than the max lag
    with django_assert_num_queries(1):
        assert client.get(ME).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_the_feed_waits_for_a_revocation_whose_transaction_commits_after_a_later_one(settings):
    from django.db import connections

    settings.REVOCATION_FEED_INTERVAL_SECONDS = 0.5
    clock = Clock()
    local = RevocationFeed(clock=clock)
    local.poll()
    # Row A gets its id first but commits last: a poll in between sees B only.
    other = connections.create_connection("default")
    try:
        other.set_autocommit(False)
        with other.cursor() as cursor:
            cursor.execute("INSERT INTO auth_revocations (kind, subject, created_at) VALUES ('session', 'late', now())")
        Revocation.objects.create(kind=RevocationKind.SESSION, subject="early")
        local.poll()
        assert not local.trusts_cached((RevocationKind.SESSION, "early"))
        assert local.trusts_cached((RevocationKind.SESSION, "late"))
        other.commit()
    finally:
        other.close()
    clock.now += 0.5
    local.poll()
    assert not local.trusts_cached((RevocationKind.SESSION, "late"))


@pytest.mark.django_db
def test_a_new_process_learns_the_revocations_a_cache_entry_could_predate(settings):
    settings.REVOCATION_FEED_INTERVAL_SECONDS = 0.5
    Revocation.objects.create(kind=RevocationKind.API_KEY, subject="k1")
    fresh_process = RevocationFeed(clock=Clock())
    assert not fresh_process.trusts_cached((RevocationKind.API_KEY, "k2"))  # never polled: no trust
    fresh_process.poll()
    assert fresh_process.trusts_cached((RevocationKind.API_KEY, "k2"))
    assert not fresh_process.trusts_cached((RevocationKind.API_KEY, "k1"))


@pytest.mark.django_db
def test_old_feed_rows_are_pruned():
    from datetime import timedelta

    from django.utils import timezone

    from accounts.revocations import revocations_prune

    Revocation.objects.create(kind="session", subject="old", created_at=timezone.now() - timedelta(days=2))
    Revocation.objects.create(kind="session", subject="new")
    assert revocations_prune() == 1
    assert list(Revocation.objects.values_list("subject", flat=True)) == ["new"]


def test_beat_prunes_the_revocation_feed_hourly(settings):
    from accounts.tasks import prune_revocations

    entry = settings.CELERY_BEAT_SCHEDULE["accounts-prune-revocations"]
    assert entry == {"task": prune_revocations.name, "schedule": 3600.0}


# --- every path that replaces a password ends the other sessions ----------------------------------------


def _ended(tokens: dict) -> bool:
    refreshed = APIClient().post(REFRESH, {"refresh_token": tokens["refresh_token"]}, format="json")
    return bearer(tokens["access_token"]).get(ME).status_code == 401 and refreshed.status_code == 401


@pytest.mark.django_db
def test_set_password_and_save_from_the_shell_ends_every_session():
    user = UserFactory()
    tokens = login(user)
    bearer(tokens["access_token"]).get(ME)  # warm
    user = User.objects.get(pk=user.pk)
    user.set_password("a brand new passphrase 9")
    user.save()
    assert _ended(tokens)


@pytest.mark.django_db
def test_the_admin_password_form_ends_every_session(admin_user):
    user = UserFactory()
    tokens = login(user)
    bearer(tokens["access_token"]).get(ME)
    browser = Client()
    browser.force_login(admin_user)
    response = browser.post(
        f"/admin/accounts/user/{user.pk}/password/",
        {"password1": "operator set 4 this", "password2": "operator set 4 this", "usable_password": "true"},
    )
    assert response.status_code == 302, response.content[:500]
    assert _ended(tokens)


@pytest.mark.django_db
def test_the_changepassword_command_ends_every_session(monkeypatch):
    user = UserFactory()
    tokens = login(user)
    monkeypatch.setattr("getpass.getpass", lambda prompt="": "command line secret 12")
    call_command("changepassword", user.email, stdout=None)
    assert _ended(tokens)


@pytest.mark.django_db
def test_the_api_password_change_keeps_the_callers_session_and_ends_the_others():
    user = UserFactory()
    mine, other = login(user), login(user)
    response = bearer(mine["access_token"]).post(
        "/api/v1/auth/password",
        {"current_password": DEFAULT_PASSWORD, "new_password": "my next passphrase 31"},
        format="json",
    )
    assert response.status_code == 204, response.content
    assert bearer(mine["access_token"]).get(ME).status_code == 200
    assert _ended(other)


@pytest.mark.django_db
def test_a_hash_upgrade_at_login_is_not_a_password_change():
    from django.contrib.auth.hashers import make_password

    user = UserFactory()
    User.objects.filter(pk=user.pk).update(password=make_password(DEFAULT_PASSWORD, hasher="pbkdf2_sha256"))
    first = login(user)  # upgrades the hash to argon2id
    assert User.objects.get(pk=user.pk).password.startswith("argon2")
    assert bearer(first["access_token"]).get(ME).status_code == 200
    login(user)
    assert Session.objects.filter(user=user, revoked_at__isnull=True).count() == 2


# --- refused logins change nothing -------------------------------------------------------------------


@pytest.mark.django_db
def test_a_refused_login_of_a_deactivated_user_does_not_upgrade_the_stored_hash():
    from django.contrib.auth.hashers import make_password

    user = UserFactory(is_active=False)
    old = make_password(DEFAULT_PASSWORD, hasher="pbkdf2_sha256")
    User.objects.filter(pk=user.pk).update(password=old)
    response = APIClient().post(LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json")
    assert response.status_code == 401
    assert User.objects.get(pk=user.pk).password == old


@pytest.mark.django_db
def test_deactivating_a_user_records_a_user_revocation():
    user = UserFactory()
    user.is_active = False
    user.save()
    assert Revocation.objects.filter(kind=RevocationKind.USER, subject=str(user.pk)).exists()
    assert selectors.user_get(user_id=user.pk).is_active is False
