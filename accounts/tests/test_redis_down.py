"""Redis down, slow or restarted: every auth endpoint still answers correctly.

Real failures only: a closed port, a TCP "blackhole" that accepts and never
answers, and a second redis-server killed with SIGKILL. The main Redis is
never touched by these tests (only the shared conftest clears its test DB).
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid

import pytest
import redis
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_redis import get_redis_connection
from rest_framework.test import APIClient

from accounts import services
from accounts.models import ApiKey
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import bearer
from velro.cache import safe_cache
from velro.ratelimit import limiter

pytestmark = pytest.mark.django_db(transaction=False)

SIGNUP = "/api/v1/auth/signup"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
PASSWORD = "/api/v1/auth/password"
ME = "/api/v1/auth/me"
API_KEYS = "/api/v1/auth/api-keys"

SECRET = "quiet orchard lantern 58"
NEW_SECRET = "another quiet passphrase 77"
CLOSED_PORT = "redis://127.0.0.1:1/0"


@pytest.fixture
def redis_down(point_cache_at):
    point_cache_at(CLOSED_PORT)


def signup(email: str, password: str = SECRET):
    return APIClient().post(SIGNUP, {"email": email, "password": password}, format="json")


def login(email: str, password: str = SECRET):
    return APIClient().post(LOGIN, {"email": email, "password": password}, format="json")


def new_email() -> str:
    return f"down-{uuid.uuid4().hex[:10]}@example.com"


def me_queries(client: APIClient) -> tuple[object, list[str]]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(ME)
    return response, [query["sql"] for query in captured.captured_queries]


def cache_unavailable_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "velro.cache" and "cache unavailable" in r.getMessage()]


# --- Redis refused (closed port) -------------------------------------------------------------


def test_the_closed_port_really_fails(redis_down):
    """Precondition for the tests below: the cache is unreachable, not silently fine."""
    safe_cache.set("probe", 1)
    assert safe_cache.stats["errors"] == 1
    assert not safe_cache.available


def test_signup_login_refresh_and_me_answer_normally_with_redis_down(redis_down):
    email = new_email()
    created = signup(email)
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["user"]["email"] == email
    assert body["token_type"] == "bearer"
    assert body["api_key"]["key"].startswith("vk_live_")

    logged_in = login(email)
    assert logged_in.status_code == 200, logged_in.content
    tokens = logged_in.json()
    assert tokens["user"]["id"] == body["user"]["id"]

    refreshed = APIClient().post(REFRESH, {"refresh_token": tokens["refresh_token"]}, format="json")
    assert refreshed.status_code == 200, refreshed.content
    rotated = refreshed.json()
    assert rotated["refresh_token"] != tokens["refresh_token"]

    client = bearer(rotated["access_token"])
    for _ in range(2):
        response = client.get(ME)
        assert response.status_code == 200, response.content
        assert response.json() == body["user"]

    assert safe_cache.stats["errors"] >= 1  # Redis really was down throughout
    assert safe_cache.stats["hits"] == 0


def test_wrong_password_is_still_a_clean_401_with_redis_down(redis_down):
    email = new_email()
    assert signup(email).status_code == 201
    response = login(email, "not the password at all")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_credentials"


def test_profile_update_with_redis_down(redis_down):
    email = new_email()
    client = bearer(signup(email).json()["access_token"])
    response = client.patch(ME, {"display_name": "Offline Editor"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["display_name"] == "Offline Editor"
    assert client.get(ME).json()["display_name"] == "Offline Editor"


def test_api_keys_create_and_use_with_redis_down(redis_down):
    body = signup(new_email()).json()
    session = bearer(body["access_token"])
    created = session.post(API_KEYS, {"name": "offline"}, format="json")
    assert created.status_code == 201, created.content
    for key in (body["api_key"]["key"], created.json()["key"]):
        by_header = APIClient()
        by_header.credentials(HTTP_X_API_KEY=key)
        assert by_header.get(ME).status_code == 200
        assert bearer(key).get(ME).status_code == 200
    listed = session.get(API_KEYS)
    assert listed.status_code == 200
    assert len(listed.json()["results"]) == 2

    assert session.delete(f"{API_KEYS}/{created.json()['id']}").status_code == 204
    assert bearer(created.json()["key"]).get(ME).status_code == 401
    assert ApiKey.objects.get(pk=created.json()["id"]).revoked_at is not None


def test_logout_takes_effect_at_once_with_redis_down(redis_down):
    body = signup(new_email()).json()
    client = bearer(body["access_token"])
    assert client.get(ME).status_code == 200
    assert client.post(LOGOUT, {}, format="json").status_code == 204
    assert client.get(ME).status_code == 401
    assert APIClient().post(REFRESH, {"refresh_token": body["refresh_token"]}, format="json").status_code == 401


def test_password_change_takes_effect_at_once_with_redis_down(redis_down):
    email = new_email()
    first = bearer(signup(email).json()["access_token"])
    second = bearer(login(email).json()["access_token"])
    assert first.get(ME).status_code == 200
    response = second.post(PASSWORD, {"current_password": SECRET, "new_password": NEW_SECRET}, format="json")
    assert response.status_code == 204, response.content
    assert first.get(ME).status_code == 401
    assert second.get(ME).status_code == 200
    assert login(email, SECRET).status_code == 401
    assert login(email, NEW_SECRET).status_code == 200


def test_the_outage_is_logged_once_for_many_requests(redis_down, caplog):
    caplog.set_level(logging.WARNING, logger="velro.cache")
    email = new_email()
    user = UserFactory(email=email)
    tokens = login(email, DEFAULT_PASSWORD).json()  # 1
    client = bearer(tokens["access_token"])
    assert client.get(ME).status_code == 200  # 2
    assert client.get(ME).status_code == 200  # 3
    assert APIClient().post(REFRESH, {"refresh_token": tokens["refresh_token"]}, format="json").status_code == 200
    assert login(user.email, DEFAULT_PASSWORD).status_code == 200  # 5
    warnings = cache_unavailable_warnings(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].levelno == logging.WARNING


def test_the_outage_is_logged_once_even_across_cooldowns(redis_down, settings, caplog):
    settings.CACHE_BREAKER_COOLDOWN_SECONDS = 0  # every request retries Redis, and fails again
    caplog.set_level(logging.WARNING, logger="velro.cache")
    body = signup(new_email()).json()
    client = bearer(body["access_token"])
    for _ in range(5):
        assert client.get(ME).status_code == 200
    assert safe_cache.stats["errors"] >= 5
    assert len(cache_unavailable_warnings(caplog)) == 1


def test_login_rate_limit_still_applies_with_redis_down(redis_down, settings, monkeypatch):
    settings.RATELIMIT_LOGIN_IP = (3, 60)
    monkeypatch.setattr(limiter, "clock", lambda: 1_000_000_010.0)  # 50 s into a 60 s window, the one before empty
    user = UserFactory()
    statuses = [login(user.email, DEFAULT_PASSWORD).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    response = login(user.email, DEFAULT_PASSWORD)
    assert response.status_code == 429, response.content
    assert response.json()["error"] == "rate_limited"
    assert response["Retry-After"] == "40"  # 10 s to the window's end, then 30 s until 2 of its 4 slide out
    assert safe_cache.stats["errors"] >= 1  # the counts came from the per-process fallback


def test_signup_rate_limit_still_applies_with_redis_down(redis_down, settings):
    settings.RATELIMIT_SIGNUP_IP = (2, 3600)
    assert signup(new_email()).status_code == 201
    assert signup(new_email()).status_code == 201
    response = signup(new_email())
    assert response.status_code == 429
    assert response.json()["error"] == "rate_limited"
    assert int(response["Retry-After"]) >= 1


# --- a slow Redis (accepts, never answers) ------------------------------------------------------


class Blackhole:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.02)
        self.port = self.sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-blackhole", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.connections.append(conn)

    @property
    def accepted(self) -> int:
        """Connections accepted so far (after the backlog has drained)."""
        time.sleep(0.1)
        with self._lock:
            return len(self.connections)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        with self._lock:
            for conn in self.connections:
                conn.close()
        self.sock.close()


@pytest.fixture
def blackhole(point_cache_at):
    hole = Blackhole()
    point_cache_at(f"redis://127.0.0.1:{hole.port}/0")
    yield hole
    hole.close()


def test_the_blackhole_really_times_out(blackhole):
    """Precondition: a call against it is a socket timeout, not a quick refusal."""
    safe_cache.get("probe")
    assert safe_cache.stats["errors"] == 1
    assert blackhole.accepted >= 1


def test_login_and_me_succeed_against_a_redis_that_never_answers(blackhole):
    user = UserFactory()
    response = login(user.email, DEFAULT_PASSWORD)
    assert response.status_code == 200, response.content
    client = bearer(response.json()["access_token"])
    me = client.get(ME)
    assert me.status_code == 200
    assert me.json()["id"] == str(user.pk)
    assert safe_cache.stats["errors"] >= 1


def test_the_breaker_stops_requests_from_each_waiting_on_a_slow_redis(blackhole):
    user = UserFactory()
    tokens = services.session_start(user=user, ip="127.0.0.1", user_agent="test")  # no cache involved
    client = bearer(tokens.access_token)
    assert blackhole.accepted == 0
    for _ in range(10):
        assert client.get(ME).status_code == 200
    attempts = blackhole.accepted
    assert 1 <= attempts <= 2, attempts
    assert safe_cache.stats["errors"] <= 2
    assert safe_cache.stats["bypassed"] >= 9


# --- a real second redis-server, killed and restarted ---------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server"),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=5)


@pytest.fixture
def second_redis(point_cache_at):
    server = RedisServer(_free_port())
    assert server.port != 6379
    server.start()
    point_cache_at(f"redis://127.0.0.1:{server.port}/0")
    yield server
    server.kill()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs a redis-server binary")
def test_redis_killed_and_restarted_mid_traffic(second_redis, settings):
    settings.CACHE_BREAKER_COOLDOWN_SECONDS = 0.2
    user = UserFactory()
    tokens = login(user.email, DEFAULT_PASSWORD).json()
    client = bearer(tokens["access_token"])
    assert client.get(ME).status_code == 200
    response, queries = me_queries(client)
    assert response.status_code == 200
    assert queries == []  # warm against the second Redis
    assert get_redis_connection("default").dbsize() > 0

    second_redis.kill()

    response = client.get(ME)
    assert response.status_code == 200, response.content
    assert response.json()["id"] == str(user.pk)
    again = login(user.email, DEFAULT_PASSWORD)
    assert again.status_code == 200
    refreshed = APIClient().post(REFRESH, {"refresh_token": tokens["refresh_token"]}, format="json")
    assert refreshed.status_code == 200, refreshed.content
    assert safe_cache.stats["errors"] >= 1
    # a logout while Redis is down ends the session at once
    other = bearer(again.json()["access_token"])
    assert other.post(LOGOUT, {}, format="json").status_code == 204
    assert other.get(ME).status_code == 401

    second_redis.start()  # same port, empty
    time.sleep(0.3)  # past the breaker cooldown

    assert login(user.email, DEFAULT_PASSWORD).status_code == 200  # finds Redis back
    assert safe_cache.available
    fresh = bearer(refreshed.json()["access_token"])
    assert fresh.get(ME).status_code == 200  # cold after the restart
    response, queries = me_queries(fresh)
    assert response.status_code == 200
    assert queries == []  # caching has resumed
    assert other.get(ME).status_code == 401
    raw = get_redis_connection("default")
    assert int(raw.get("velro:1:gen")) == 1  # the recovery bumped the generation
