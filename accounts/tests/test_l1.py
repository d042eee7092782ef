"""The per-process L1 in front of Redis (accounts.selectors.session_l1) and the
verified-token cache (accounts.tokens): a warm request skips Redis and PyJWT,
and neither weakens revocation or expiry.

The L1 answers only while the revocation feed is fresh and knows nothing
against the session or its user: a revocation made in this process ends an L1
session at once, and so does one made by another process of this machine (a
shared-memory epoch every process checks); one made on another machine, at
this process's next poll (the feed's bound, proven across real processes by
test_revocation_two_nodes.py). A change to a user made on another machine is
at most AUTH_L1_TTL_SECONDS old.
"""

from __future__ import annotations

import uuid

import jwt
import pytest

from accounts import selectors, services, signing, tokens
from accounts.revocations import feed
from accounts.tests.factories import UserFactory
from accounts.tests.support import Clock, api_login, bearer, sign_token, token_claims
from velro.cache import safe_cache
from velro.localcache import SharedEpoch

ME = "/api/v1/auth/me"


@pytest.fixture
def redis_reads(monkeypatch) -> list[list[str]]:
    """Every get_many the cache is asked, by keys."""
    calls: list[list[str]] = []
    original = safe_cache.get_many

    def counted(keys, **kwargs):
        calls.append(list(keys))
        return original(keys, **kwargs)

    monkeypatch.setattr(safe_cache, "get_many", counted)
    return calls


def _warm(user) -> tuple[object, uuid.UUID]:
    body = api_login(user.email)
    client = bearer(body["access_token"])
    feed.poll()
    assert client.get(ME).status_code == 200  # verified against Redis/PostgreSQL, kept in the L1
    return client, tokens.access_token_decode(body["access_token"]).session_id


@pytest.mark.django_db
def test_a_warm_l1_answers_a_token_request_without_sql_or_a_redis_round_trip(
    feed_on, redis_reads, django_assert_num_queries
):
    client, _ = _warm(UserFactory())
    redis_reads.clear()
    with django_assert_num_queries(0):
        assert client.get(ME).status_code == 200
    assert redis_reads == []


@pytest.mark.django_db
def test_the_l1_is_off_when_the_revocation_feed_is_off(settings, redis_reads):
    settings.REVOCATION_FEED_INTERVAL_SECONDS = 0
    client = bearer(api_login(UserFactory().email)["access_token"])
    client.get(ME)
    redis_reads.clear()
    assert client.get(ME).status_code == 200
    assert len(redis_reads) == 1  # nothing would bound an L1 entry's staleness: every request asks Redis


@pytest.mark.django_db
def test_a_logout_in_this_process_ends_an_l1_session_at_once(feed_on):
    user = UserFactory()
    client, session_id = _warm(user)
    services.session_logout(user_id=user.pk, session_id=session_id, scope="local")
    assert client.get(ME).status_code == 401  # no poll needed


@pytest.mark.django_db
def test_a_deactivation_in_this_process_ends_every_l1_session_of_the_user_at_once(feed_on):
    user = UserFactory()
    first, _ = _warm(user)
    second, _ = _warm(user)
    user.is_active = False
    user.save()
    assert first.get(ME).status_code == 401
    assert second.get(ME).status_code == 401


@pytest.mark.django_db
def test_a_logout_made_on_another_machine_that_lost_redis_ends_an_l1_session_at_the_next_poll(
    feed_on, monkeypatch, redis_reads
):
    user = UserFactory()
    client, session_id = _warm(user)
    # Another machine without Redis: it writes the row and the feed entry;
    # this process's L1, cache entries, epoch and feed view are untouched
    # until it polls.
    with monkeypatch.context() as elsewhere:
        elsewhere.setattr("accounts.revocations.tombstones_write", lambda kind, subjects: None)
        elsewhere.setattr("accounts.services.session_cache_invalidate", lambda session_ids: None)
        elsewhere.setattr("accounts.revocations.l1_epoch_bump", lambda: None)
        elsewhere.setattr(feed, "note", lambda kind, subjects: None)
        services.session_logout(user_id=user.pk, session_id=session_id, scope="local")
    redis_reads.clear()
    assert client.get(ME).status_code == 200  # the L1's copy, until the next poll
    assert redis_reads == []
    feed_on.now += 0.5
    assert feed.poll() == 1
    assert client.get(ME).status_code == 401


@pytest.mark.django_db
def test_a_logout_made_by_another_process_of_this_machine_ends_an_l1_session_at_once(feed_on, monkeypatch, settings):
    """The other process writes the row, the tombstone and the feed entry, and
    bumps the machine's epoch through its own mapping: no poll is needed."""
    user = UserFactory()
    client, session_id = _warm(user)
    other_process = SharedEpoch(settings.AUTH_L1_EPOCH_PATH)
    with monkeypatch.context() as elsewhere:
        elsewhere.setattr("accounts.revocations.l1_epoch_bump", other_process.bump)
        elsewhere.setattr("accounts.selectors.l1_epoch_bump", other_process.bump)
        elsewhere.setattr(feed, "note", lambda kind, subjects: None)
        services.session_logout(user_id=user.pk, session_id=session_id, scope="local")
    assert client.get(ME).status_code == 401


@pytest.mark.django_db
def test_an_l1_session_is_not_trusted_once_the_feed_lags(feed_on, django_assert_num_queries):
    client, _ = _warm(UserFactory())
    feed_on.now += 1.01  # no good poll for longer than the max lag
    with django_assert_num_queries(1):  # the session row: neither the L1 nor Redis is trusted
        assert client.get(ME).status_code == 200


@pytest.mark.django_db
def test_a_profile_change_made_on_another_machine_reaches_the_l1_within_its_ttl(feed_on, settings, monkeypatch):
    settings.AUTH_L1_TTL_SECONDS = 2.0
    clock = Clock()
    monkeypatch.setattr(selectors.session_l1, "clock", clock)
    user = UserFactory(display_name="Before")
    client, _ = _warm(user)
    with monkeypatch.context() as elsewhere:  # the write happens on another machine (no shared epoch)
        elsewhere.setattr(selectors, "_l1_drop_all", lambda: None)
        services.user_update_profile(user_id=user.pk, display_name="After")
    assert client.get(ME).json()["display_name"] == "Before"
    clock.now += 2.0
    assert client.get(ME).json()["display_name"] == "After"


@pytest.mark.django_db
def test_a_profile_change_in_this_process_is_read_back_at_once(feed_on):
    user = UserFactory(display_name="Before")
    client, _ = _warm(user)
    assert client.patch(ME, {"display_name": "After"}, format="json").status_code == 200
    assert client.get(ME).json()["display_name"] == "After"


# --- the verified-token cache ---------------------------------------------------------------------


@pytest.mark.django_db
def test_a_verified_token_is_refused_once_it_expires_even_from_the_cache(settings, monkeypatch):
    token = api_login(UserFactory().email)["access_token"]
    claims = tokens.access_token_decode(token)  # verified and kept
    later = claims.expires_at + settings.JWT_LEEWAY_SECONDS + 1
    monkeypatch.setattr("accounts.tokens.time.time", lambda: later)
    monkeypatch.setattr("jwt.api_jwt.datetime", _FrozenDatetime(later))
    with pytest.raises(tokens.InvalidAccessToken):
        tokens.access_token_decode(token)


@pytest.mark.django_db
def test_a_token_verified_under_one_key_is_refused_under_another(settings):
    settings.JWT_SECRET = "a" * 32
    signed = api_login(UserFactory().email)["access_token"]
    token = sign_token(token_claims(signed, audience=settings.JWT_AUDIENCE), hs256_key=settings.JWT_SECRET)
    tokens.access_token_decode(token)  # a legacy HS256 token, verified and kept
    settings.JWT_SECRET = "b" * 32
    with pytest.raises(tokens.InvalidAccessToken):
        tokens.access_token_decode(token)


@pytest.mark.django_db
def test_a_token_verified_under_a_key_is_refused_once_the_key_is_revoked():
    token = api_login(UserFactory().email)["access_token"]
    tokens.access_token_decode(token)  # verified and kept
    signing.signing_key_revoke(kid=jwt.get_unverified_header(token)["kid"])
    with pytest.raises(tokens.InvalidAccessToken):
        tokens.access_token_decode(token)


class _FrozenDatetime:
    """PyJWT's clock (jwt.api_jwt.datetime.now), frozen at `timestamp`."""

    def __init__(self, timestamp: float) -> None:
        import datetime as real

        self._real = real.datetime
        self._now = real.datetime.fromtimestamp(timestamp, tz=real.UTC)

    def now(self, tz=None):
        return self._now

    def __getattr__(self, name):
        return getattr(self._real, name)
