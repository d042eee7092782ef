"""Rate limits (ASVS 6.3.1): counted in the real Redis, per IP / account / user.

Limits are lowered per test with the `settings` fixture. The shared
limiter's clock runs from the start of a window (real seconds, shifted), so
no test's count is weighed with a previous window's; the sliding window itself
is tested with its own RateLimiter and an injected clock.
"""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection
from django.test import RequestFactory
from django_redis.cache import RedisCache
from rest_framework.test import APIClient

from accounts.hashers import Argon2idPasswordHasher
from accounts.models import ApiKey, RefreshToken, Session, User
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tokens import refresh_token_hash
from velro.cache import SafeCache
from velro.errors import RateLimited
from velro.net import client_ip
from velro.ratelimit import Rate, RateLimiter, limiter

pytestmark = pytest.mark.django_db(transaction=False)

LOGIN = "/api/v1/auth/login"
SIGNUP = "/api/v1/auth/signup"
REFRESH = "/api/v1/auth/refresh"
PASSWORD = "/api/v1/auth/password"
API_KEYS = "/api/v1/auth/api-keys"
STRONG = "violet tractor umbrella 42"
HOUR = 3600
WINDOW_START = 1_800_000_000.0  # a multiple of 60, 300, 900 and 3600


@pytest.fixture(autouse=True)
def _from_a_window_start(monkeypatch):
    started = time.monotonic()
    monkeypatch.setattr(limiter, "clock", lambda: WINDOW_START + (time.monotonic() - started))


def login(api, email: str, password: str = DEFAULT_PASSWORD, ip: str = "10.0.0.1", **extra):
    return api.post(LOGIN, {"email": email, "password": password}, format="json", REMOTE_ADDR=ip, **extra)


def assert_rate_limited(response, window: int) -> None:
    assert response.status_code == 429, response.content
    body = response.json()
    assert body["error"] == "rate_limited"
    assert isinstance(body["detail"], str) and body["detail"]
    assert set(body) == {"error", "detail"}
    retry_after = response["Retry-After"]
    assert retry_after.isdigit(), retry_after
    assert 1 <= int(retry_after) <= 2 * window  # the sliding count: up to the end of the next window


@pytest.fixture
def verify_calls(monkeypatch) -> list[str]:
    """Every argon2id verify (a real one: the spy calls through)."""
    calls: list[str] = []
    original = Argon2idPasswordHasher.verify

    def spy(self, password, encoded):
        calls.append(encoded)
        return original(self, password, encoded)

    monkeypatch.setattr(Argon2idPasswordHasher, "verify", spy)
    return calls


# --- login per IP ------------------------------------------------------------------------------


def test_login_per_ip_limit_answers_429_with_retry_after(api, user, settings, verify_calls):
    settings.RATELIMIT_LOGIN_IP = (3, 60)
    for _ in range(3):
        assert login(api, user.email).status_code == 200
    verify_calls.clear()
    response = login(api, user.email)
    assert_rate_limited(response, window=60)
    assert verify_calls == []  # refused before any hashing
    assert Session.objects.filter(user=user).count() == 3


def test_login_per_ip_limit_counts_failed_attempts_too(api, user, settings):
    settings.RATELIMIT_LOGIN_IP = (3, HOUR)
    for _ in range(3):
        assert login(api, "nobody@example.com", "wrong wrong").status_code == 401
    assert_rate_limited(login(api, user.email), window=HOUR)


def test_login_per_ip_limit_does_not_touch_another_ip(api, user, settings):
    settings.RATELIMIT_LOGIN_IP = (3, HOUR)
    for _ in range(3):
        assert login(api, user.email, ip="10.0.0.1").status_code == 200
    assert login(api, user.email, ip="10.0.0.1").status_code == 429
    assert login(api, user.email, ip="10.0.0.2").status_code == 200


# --- failed logins per account -----------------------------------------------------------------


def test_failed_logins_lock_the_account_for_that_ip_without_verifying_a_hash(api, user, settings, verify_calls):
    settings.RATELIMIT_LOGIN_FAILURES_ACCOUNT_IP = (3, 300)
    for _ in range(3):
        assert login(api, user.email, "wrong password!").status_code == 401
    assert len(verify_calls) == 3
    verify_calls.clear()
    response = login(api, user.email, DEFAULT_PASSWORD)  # even the right password
    assert_rate_limited(response, window=300)
    assert verify_calls == []
    assert not Session.objects.filter(user=user).exists()


def test_a_victim_still_logs_in_from_another_ip_while_one_attacker_ip_is_locked(api, user, settings):
    settings.RATELIMIT_LOGIN_FAILURES_ACCOUNT_IP = (3, 300)
    for _ in range(3):
        assert login(api, user.email, "wrong password!", ip="198.51.100.66").status_code == 401
    assert login(api, user.email, ip="198.51.100.66").status_code == 429
    response = login(api, user.email, ip="192.0.2.10")
    assert response.status_code == 200, response.content
    assert response.json()["user"]["id"] == str(user.pk)


def test_successful_logins_do_not_count_as_failures(api, user, settings):
    settings.RATELIMIT_LOGIN_FAILURES_ACCOUNT_IP = (2, 300)
    for _ in range(4):
        assert login(api, user.email).status_code == 200
    assert login(api, user.email, "wrong password!").status_code == 401
    assert login(api, user.email).status_code == 200  # one failure so far: not locked
    assert login(api, user.email, "wrong password!").status_code == 401
    assert_rate_limited(login(api, user.email), window=300)  # two failures: locked


def test_a_successful_login_costs_three_counter_round_trips(api, user, settings, monkeypatch):
    """Per address before the user read; both account budgets together before
    the verify; both handed back together after it (one pipeline each)."""
    settings.RATELIMIT_ENABLE = True
    trips: list[list[str]] = []
    original = SafeCache.incr_many

    def counted(self, counters, **options):
        trips.append([key.split(":")[1] for key, _, _ in counters])
        return original(self, counters, **options)

    monkeypatch.setattr(SafeCache, "incr_many", counted)
    assert login(api, user.email).status_code == 200
    assert trips == [["login-ip"], ["login-fail-acct-ip", "login-fail-acct"], ["login-fail-acct-ip", "login-fail-acct"]]


def test_an_attempt_refused_per_address_is_not_charged_to_the_account_budget(api, user, settings):
    settings.RATELIMIT_LOGIN_FAILURES_ACCOUNT_IP = (1, 300)
    settings.RATELIMIT_LOGIN_FAILURES_ACCOUNT = (3, 300)
    assert login(api, user.email, "wrong password!", ip="10.0.0.7").status_code == 401
    for _ in range(5):  # refused at the address: the account's budget is untouched
        assert login(api, user.email, "wrong password!", ip="10.0.0.7").status_code == 429
    assert login(api, user.email, "wrong password!", ip="10.0.0.8").status_code == 401
    assert login(api, user.email, "wrong password!", ip="10.0.0.9").status_code == 401
    assert_rate_limited(login(api, user.email, "wrong password!", ip="10.0.0.10"), window=300)


def test_failures_count_per_account_whatever_the_email_case(api, settings):
    user = UserFactory(email="carol@example.com")
    settings.RATELIMIT_LOGIN_FAILURES_ACCOUNT_IP = (2, 300)
    assert login(api, "Carol@Example.com", "wrong password!").status_code == 401
    assert login(api, "CAROL@example.COM", "wrong password!").status_code == 401
    assert login(api, user.email).status_code == 429


def test_failures_of_one_account_do_not_lock_another_account_on_the_same_ip(api, user, settings):
    other = UserFactory()
    settings.RATELIMIT_LOGIN_FAILURES_ACCOUNT_IP = (2, 300)
    for _ in range(2):
        assert login(api, user.email, "wrong password!").status_code == 401
    assert login(api, user.email).status_code == 429
    assert login(api, other.email).status_code == 200


def test_failures_from_many_ips_lock_the_account_everywhere(api, user, settings):
    settings.RATELIMIT_LOGIN_FAILURES_ACCOUNT_IP = (3, 300)
    settings.RATELIMIT_LOGIN_FAILURES_ACCOUNT = (4, 900)
    for n in range(4):
        assert login(api, user.email, "wrong password!", ip=f"203.0.113.{n + 1}").status_code == 401
    assert_rate_limited(login(api, user.email, ip="203.0.113.200"), window=900)


@pytest.mark.django_db(transaction=True)
def test_concurrent_failed_logins_cannot_overshoot_the_account_failure_limit(settings, verify_calls):
    """The failure limit holds under a burst too: an attacker firing wrong
    passwords in parallel gets no more password checks than the limit allows."""
    settings.RATELIMIT_LOGIN_FAILURES_ACCOUNT_IP = (3, 300)
    user = UserFactory()
    burst = 12
    barrier = threading.Barrier(burst)
    statuses: list[int] = []
    errors: list[BaseException] = []

    def attacker() -> None:
        try:
            client = APIClient()
            barrier.wait(timeout=10)
            statuses.append(login(client, user.email, "wrong password!").status_code)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=attacker) for _ in range(burst)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(statuses) == burst
    checked = statuses.count(401)
    assert checked == 3, f"{checked} of {burst} parallel wrong passwords were verified (limit 3): {statuses}"
    assert statuses.count(429) == burst - 3
    assert len(verify_calls) == 3


# --- other operations -----------------------------------------------------------------------------


def test_signup_per_ip_limit(api, settings):
    settings.RATELIMIT_SIGNUP_IP = (2, HOUR)
    for n in range(2):
        response = api.post(SIGNUP, {"email": f"s{n}@example.com", "password": STRONG}, format="json")
        assert response.status_code == 201, response.content
    response = api.post(SIGNUP, {"email": "s2@example.com", "password": STRONG}, format="json")
    assert_rate_limited(response, window=HOUR)
    assert not User.objects.filter(email="s2@example.com").exists()
    other_ip = api.post(SIGNUP, {"email": "s3@example.com", "password": STRONG}, format="json", REMOTE_ADDR="10.9.9.9")
    assert other_ip.status_code == 201, other_ip.content


def test_refresh_per_ip_limit(api, user, settings):
    settings.RATELIMIT_REFRESH_IP = (2, HOUR)
    raw = login(api, user.email, ip="10.0.0.50").json()["refresh_token"]
    for _ in range(2):
        assert api.post(REFRESH, {"refresh_token": "not-a-token"}, format="json").status_code == 401
    response = api.post(REFRESH, {"refresh_token": raw}, format="json")  # a valid token, over the limit
    assert_rate_limited(response, window=HOUR)
    assert RefreshToken.objects.get(token_hash=refresh_token_hash(raw)).rotated_at is None
    other_ip = api.post(REFRESH, {"refresh_token": raw}, format="json", REMOTE_ADDR="10.0.0.51")
    assert other_ip.status_code == 200, other_ip.content


def test_password_change_per_user_limit(auth_api, user, settings):
    settings.RATELIMIT_PASSWORD_USER = (2, 900)
    wrong = {"current_password": "not my password", "new_password": "another fine passphrase 7"}
    for _ in range(2):
        assert auth_api.post(PASSWORD, wrong, format="json").status_code == 400
    right = {"current_password": DEFAULT_PASSWORD, "new_password": "another fine passphrase 7"}
    response = auth_api.post(PASSWORD, right, format="json")
    assert_rate_limited(response, window=900)
    assert User.objects.get(pk=user.pk).check_password(DEFAULT_PASSWORD)


def test_password_change_limit_is_per_user_not_global(auth_api, settings):
    settings.RATELIMIT_PASSWORD_USER = (1, 900)
    wrong = {"current_password": "not my password", "new_password": "another fine passphrase 7"}
    assert auth_api.post(PASSWORD, wrong, format="json").status_code == 400
    assert auth_api.post(PASSWORD, wrong, format="json").status_code == 429
    other = UserFactory()
    client = APIClient()
    token = login(client, other.email).json()["access_token"]
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.post(PASSWORD, wrong, format="json").status_code == 400


def test_api_key_creation_per_user_limit(auth_api, user, settings):
    settings.RATELIMIT_API_KEYS_USER = (2, HOUR)
    for n in range(2):
        assert auth_api.post(API_KEYS, {"name": f"k{n}"}, format="json").status_code == 201
    assert_rate_limited(auth_api.post(API_KEYS, {"name": "k2"}, format="json"), window=HOUR)
    assert ApiKey.objects.filter(user=user).count() == 2


# --- switched off ------------------------------------------------------------------------------------


def test_no_429_when_rate_limits_are_disabled(api, user, settings):
    settings.RATELIMIT_ENABLE = False
    for name in (
        "RATELIMIT_LOGIN_IP",
        "RATELIMIT_LOGIN_FAILURES_ACCOUNT_IP",
        "RATELIMIT_LOGIN_FAILURES_ACCOUNT",
        "RATELIMIT_SIGNUP_IP",
        "RATELIMIT_REFRESH_IP",
    ):
        setattr(settings, name, (1, HOUR))
    statuses = [login(api, user.email, "wrong password!").status_code for _ in range(4)]
    statuses += [login(api, user.email).status_code for _ in range(4)]
    statuses += [
        api.post(SIGNUP, {"email": f"off{n}@example.com", "password": STRONG}, format="json").status_code
        for n in range(3)
    ]
    statuses += [api.post(REFRESH, {"refresh_token": "nope"}, format="json").status_code for _ in range(3)]
    assert statuses == [401] * 4 + [200] * 4 + [201] * 3 + [401] * 3


# --- client identity behind proxies -------------------------------------------------------------------


def test_spoofed_forwarded_for_is_ignored_without_trusted_proxies(api, user, settings):
    settings.TRUSTED_PROXY_COUNT = 0
    settings.RATELIMIT_LOGIN_IP = (2, HOUR)
    assert login(api, user.email, HTTP_X_FORWARDED_FOR="203.0.113.1").status_code == 200
    assert login(api, user.email, HTTP_X_FORWARDED_FOR="203.0.113.2").status_code == 200
    assert_rate_limited(login(api, user.email, HTTP_X_FORWARDED_FOR="203.0.113.3"), window=HOUR)
    assert set(Session.objects.filter(user=user).values_list("ip", flat=True)) == {"10.0.0.1"}


def test_with_one_trusted_proxy_the_rightmost_forwarded_address_is_the_client(api, user, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    settings.RATELIMIT_LOGIN_IP = (2, HOUR)
    proxy = "10.0.0.254"
    for _ in range(2):
        assert login(api, user.email, ip=proxy, HTTP_X_FORWARDED_FOR="203.0.113.7").status_code == 200
    assert login(api, user.email, ip=proxy, HTTP_X_FORWARDED_FOR="203.0.113.7").status_code == 429
    # Another client behind the same proxy has its own count.
    response = login(api, user.email, ip=proxy, HTTP_X_FORWARDED_FOR="203.0.113.8")
    assert response.status_code == 200, response.content
    latest = Session.objects.filter(user=user).order_by("-created_at").first()
    assert latest.ip == "203.0.113.8"


def test_a_client_prepended_forwarded_address_does_not_escape_the_limit(api, user, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    settings.RATELIMIT_LOGIN_IP = (2, HOUR)
    proxy = "10.0.0.254"
    assert login(api, user.email, ip=proxy, HTTP_X_FORWARDED_FOR="203.0.113.7").status_code == 200
    assert login(api, user.email, ip=proxy, HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.7").status_code == 200
    response = login(api, user.email, ip=proxy, HTTP_X_FORWARDED_FOR="9.9.9.9, 203.0.113.7")
    assert_rate_limited(response, window=HOUR)


def _request(remote: str = "10.0.0.1", forwarded: str | None = None):
    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().get("/", **extra)


@pytest.mark.parametrize(
    ("hops", "remote", "forwarded", "expected"),
    [
        (0, "10.0.0.1", None, "10.0.0.1"),
        (0, "10.0.0.1", "203.0.113.9", "10.0.0.1"),
        (1, "10.0.0.1", None, "10.0.0.1"),
        (1, "10.0.0.1", "203.0.113.9", "203.0.113.9"),
        (1, "10.0.0.1", "6.6.6.6, 203.0.113.9", "203.0.113.9"),
        (1, "10.0.0.1", " 6.6.6.6 ,  203.0.113.9 ", "203.0.113.9"),
        (2, "10.0.0.1", "6.6.6.6, 203.0.113.9, 10.0.0.2", "203.0.113.9"),
        (2, "10.0.0.1", "203.0.113.9", "10.0.0.1"),  # fewer entries than proxies
        (1, "10.0.0.1", "not-an-ip", "10.0.0.1"),
        (1, "10.0.0.1", "", "10.0.0.1"),
        (1, "10.0.0.1", "2001:DB8::0:1", "2001:db8::1"),
        (0, "garbage", None, None),
    ],
)
def test_client_ip(settings, hops, remote, forwarded, expected):
    settings.TRUSTED_PROXY_COUNT = hops
    assert client_ip(_request(remote, forwarded)) == expected


# --- the sliding window -----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


WINDOW = 1_000_000_200.0  # a multiple of 60: the 60 s window [...200, ...260)


def test_a_burst_across_a_window_boundary_gets_no_more_than_the_limit():
    """Fixed windows would allow 2 at the end of one window and 2 more at the
    start of the next: 4 within a second for a limit of 2 a minute."""
    clock = FakeClock(WINDOW + 59.5)
    own = RateLimiter(cache=SafeCache(), clock=clock)
    rate = Rate(2, 60)
    own.hit("test-boundary", "client-a", rate)
    own.hit("test-boundary", "client-a", rate)
    clock.now = WINDOW + 60.5  # the next window
    with pytest.raises(RateLimited):
        own.hit("test-boundary", "client-a", rate)
    own.hit("test-boundary", "client-b", rate)  # per identifier


def test_a_client_that_waits_as_retry_after_says_gets_through_and_no_sooner():
    rate = Rate(2, 60)

    def refused_then_retry_after(own: RateLimiter, client: str) -> int:
        own.hit("test-retry", client, rate)
        own.hit("test-retry", client, rate)
        with pytest.raises(RateLimited) as info:
            own.hit("test-retry", client, rate)
        return int(info.value.headers["Retry-After"])

    clock = FakeClock(WINDOW + 20)
    own = RateLimiter(cache=SafeCache(), clock=clock)
    wait = refused_then_retry_after(own, "patient")
    assert wait == 80  # the 3 counted slide out until 1 more fits: 40 s left here, 40 s of the next
    clock.now += wait
    own.hit("test-retry", "patient", rate)

    clock.now = WINDOW + 20  # the same again, retrying a second early
    assert refused_then_retry_after(own, "eager") == wait
    clock.now += wait - 1
    with pytest.raises(RateLimited):
        own.hit("test-retry", "eager", rate)


def test_a_client_that_keeps_retrying_while_refused_stays_refused():
    clock = FakeClock(WINDOW)
    own = RateLimiter(cache=SafeCache(), clock=clock)
    rate = Rate(2, 60)
    refused = 0
    for _ in range(60):  # one try every 5 s for 5 minutes
        try:
            own.hit("test-hammer", "client", rate)
        except RateLimited:
            refused += 1
        clock.now += 5
    assert refused == 58


def test_the_previous_window_stops_counting_once_it_has_slid_out():
    clock = FakeClock(WINDOW + 30)
    own = RateLimiter(cache=SafeCache(), clock=clock)
    rate = Rate(2, 60)
    own.hit("test-slide", "client", rate)
    own.hit("test-slide", "client", rate)
    clock.now = WINDOW + 120  # two windows on: nothing of the earlier count is weighed
    own.hit("test-slide", "client", rate)
    own.hit("test-slide", "client", rate)


def test_limits_survive_a_redis_outage_with_per_process_counters():
    dead_redis = RedisCache(
        "redis://127.0.0.1:1/0",
        {"OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.1, "SOCKET_TIMEOUT": 0.1}},
    )
    cache = SafeCache(dead_redis, cooldown=5.0)
    clock = FakeClock(WINDOW + 59.5)
    own = RateLimiter(cache=cache, clock=clock)
    rate = Rate(2, 60)
    own.hit("test-outage", "client", rate)
    own.hit("test-outage", "client", rate)
    clock.now = WINDOW + 60.5  # the fallback slides too: the previous window still counts
    with pytest.raises(RateLimited):
        own.hit("test-outage", "client", rate)
    assert cache.stats["errors"] >= 1  # the counts really came from the fallback


# --- owner lockout: strangers cannot lock the owner out -------------------------------------------------------------

GOTRUE_TOKEN = "/auth/v1/token?grant_type=password"


def gotrue_login(api, email: str, password: str = DEFAULT_PASSWORD, ip: str = "10.0.0.1"):
    return api.post(GOTRUE_TOKEN, {"email": email, "password": password}, format="json", REMOTE_ADDR=ip)


@pytest.fixture
def spread_attack(settings):
    """12 addresses x 5 wrong passwords: the per-account budget (50) is used up."""
    settings.RATELIMIT_LOGIN_FAILURES_ACCOUNT_IP = (5, 300)
    settings.RATELIMIT_LOGIN_FAILURES_ACCOUNT = (50, 900)
    settings.RATELIMIT_LOGIN_IP = (1000, 300)

    def attack(api, email: str) -> list[int]:
        return [
            login(api, email, "wrong guess 123", ip=f"203.0.113.{address}").status_code
            for address in range(12)
            for _ in range(5)
        ]

    return attack


@pytest.mark.parametrize("surface", ["native", "gotrue"])
def test_an_attack_spread_over_many_addresses_does_not_lock_the_owner_out_of_a_known_address(
    api, user, spread_attack, surface
):
    assert login(api, user.email, ip="198.51.100.7").status_code == 200  # the owner's usual address
    statuses = spread_attack(api, user.email)
    assert statuses.count(401) == 50 and statuses.count(429) == 10  # the attack is capped
    sign_in = login if surface == "native" else gotrue_login
    assert sign_in(api, user.email, ip="198.51.100.7").status_code == 200


def test_guessing_from_an_unknown_address_stays_capped_once_the_account_budget_is_spent(
    api, user, spread_attack, verify_calls
):
    spread_attack(api, user.email)
    verify_calls.clear()
    assert_rate_limited(login(api, user.email, "another guess 1", ip="192.0.2.99"), 900)
    assert_rate_limited(login(api, user.email, ip="192.0.2.99"), 900)  # even the right password: unknown address
    assert verify_calls == []  # refused before any hashing


def test_the_email_and_the_username_of_one_account_share_one_failure_budget(api, settings):
    settings.RATELIMIT_LOGIN_FAILURES_ACCOUNT_IP = (4, 300)
    user = UserFactory(username="shared_budget")
    ip = "10.0.0.1"  # login()'s address
    for _ in range(2):
        assert login(api, user.email, "nope nope 1").status_code == 401
    for _ in range(2):
        response = api.post(LOGIN, {"username": "shared_budget", "password": "nope 2"}, format="json", REMOTE_ADDR=ip)
        assert response.status_code == 401
    response = api.post(LOGIN, {"username": "Shared_Budget", "password": "nope 3"}, format="json", REMOTE_ADDR=ip)
    assert_rate_limited(response, 300)
    assert_rate_limited(login(api, user.email.upper(), "nope 4"), 300)


# --- the admin's sign-in ----------------------------------------------------------------------------------------------


def test_the_admin_login_is_rate_limited_and_audited_like_the_api(settings):
    from django.test import Client

    from monitoring import audit
    from monitoring.models import AuditEvent

    settings.RATELIMIT_LOGIN_FAILURES_ACCOUNT_IP = (5, 300)
    staff = UserFactory(is_staff=True, is_superuser=True)
    browser = Client(REMOTE_ADDR="203.0.113.50")
    statuses = []
    for _ in range(30):
        response = browser.post("/admin/login/", {"username": staff.email, "password": "wrong admin pw"})
        statuses.append(response.status_code)
    assert statuses == [200] * 30  # the form again, with its error
    right = browser.post("/admin/login/?next=/admin/", {"username": staff.email, "password": DEFAULT_PASSWORD})
    assert right.status_code == 200  # refused: the address used up its budget on this account
    assert "_auth_user_id" not in browser.session
    audit.flush()
    failures = AuditEvent.objects.filter(kind=AuditEvent.Kind.LOGIN_FAILURE, identifier=staff.email)
    assert failures.count() == 5
    assert failures.first().detail == {"surface": "admin"}
    # Another address (where the owner is) still signs in.
    owner = Client(REMOTE_ADDR="198.51.100.8")
    response = owner.post("/admin/login/?next=/admin/", {"username": staff.email, "password": DEFAULT_PASSWORD})
    assert response.status_code == 302
    audit.flush()
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.LOGIN_SUCCESS, user_id=staff.pk).exists()
