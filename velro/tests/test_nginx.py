"""nginx in front of gunicorn (deploy/nginx/velro.conf), as gunicorn's deployment docs require.

The repository's config runs under Debian's nginx: a master of this test's own
(`nginx -p <tmp> -c <tmp>/nginx.conf`, `daemon off;`, pid, temp files and logs in
tmp), with `listen 8000;` and `server web:8000` pointed at a free 127.0.0.1 port
and at a real gunicorn (gunicorn.conf.py) started with TRUSTED_PROXY_COUNT=1,
as docker-compose.yml deploys them. Nothing else of the file is changed; the
system's nginx is never touched. Clients come from 127.0.0.2 and 127.0.0.3
(their sockets bound to those loopback addresses) to tell them apart.

Without nginx installed the tests skip, and fail under CI=true
(scripts/services.sh ensure_nginx installs it).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from django.conf import settings

from loadtest.proxy import NginxProxy, main_config, site_config
from loadtest.supervisor import children
from monitoring.models import AuditEvent
from velro.errors import DEFAULT_BODY_LIMIT, RETRY_AFTER_SECONDS, Unavailable, unavailable_response
from velro.tests.support import BASE_DIR, HOST, GunicornServer, KeepAliveClient, free_port, http_get, required_binary

pytestmark = pytest.mark.integration

SITE = BASE_DIR / "deploy" / "nginx" / "velro.conf"
COMPOSE = BASE_DIR / "docker-compose.yml"
GUNICORN_CONF = BASE_DIR / "gunicorn.conf.py"

LOGIN = "/api/v1/auth/login"
LIMIT = DEFAULT_BODY_LIMIT  # REQUEST_BODY_MAX_BYTES' default, 2621440
MB = 1024 * 1024
LOGIN_LIMIT = 3  # RATELIMIT_LOGIN_IP for the gunicorn below: 3 an hour per address


def nginx_binary() -> str:
    return required_binary("nginx", "the reverse proxy tests")


class Nginx(NginxProxy):
    """loadtest.proxy's private nginx master, as small as a test needs: one worker,
    the access log on (the tests read it), errors at notice."""

    # Appended to (O_APPEND): the workers' access log (/dev/stdout, reopened) and the
    # master's stderr write into the same file without overwriting each other.
    fresh_log = False

    def __init__(self, directory: Path, upstream_port: int) -> None:
        nginx_binary()  # skip (or fail under CI) without nginx
        super().__init__(directory, upstream_port, access_log_off=False)

    def write_config(self) -> Path:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        # deploy/nginx/velro.conf with only `listen` and the upstream `server` replaced.
        (d / "velro.conf").write_text(site_config(self.port, self.upstream_port, access_log_off=False))
        main = main_config(d, main="worker_processes 1;\n", events="worker_connections 256;", error_log="notice")
        (d / "nginx.conf").write_text(main)
        return d / "nginx.conf"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def access_log(self) -> list[dict]:
        """The access log's lines (JSON, deploy/nginx/velro.conf's velro_proxy format)."""
        return [json.loads(line) for line in self.log_text().splitlines() if line.startswith("{")]

    def logged(self, predicate: Callable[[list[dict]], bool], timeout: float = 5) -> list[dict]:
        """The access log once `predicate(lines)` holds (nginx writes a line just after the response)."""
        deadline = time.monotonic() + timeout
        while not predicate(lines := self.access_log()):
            assert time.monotonic() < deadline, f"not in nginx's access log:\n{self.log_text()[-3000:]}"
            time.sleep(0.05)
        return lines

    def connect(self, source: str | None = None, timeout: float = 10) -> KeepAliveClient:
        return ClientFrom(HOST, self.port, source=source, timeout=timeout)


class ClientFrom(KeepAliveClient):
    """KeepAliveClient whose socket is bound to a source address (127.0.0.2...: loopback is a /8 on Linux)."""

    def __init__(self, host: str, port: int, *, source: str | None = None, timeout: float = 10) -> None:
        self.host = host
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self._buffer = b""


@pytest.fixture(scope="module")
def gunicorn(django_db_setup, tmp_path_factory):
    nginx_binary()  # skip (or fail under CI) before starting anything
    env = {
        "TRUSTED_PROXY_COUNT": "1",
        "RATELIMIT_LOGIN_IP": f"{LOGIN_LIMIT}/3600",
        "AUDIT_FLUSH_SECONDS": "0",  # a failed login's audit row is written before the response
        "LOG_FORMAT": "plain",
    }
    with GunicornServer(tmp_path_factory.mktemp("gunicorn"), workers=1, threads=4, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def nginx(gunicorn, tmp_path_factory):
    with Nginx(tmp_path_factory.mktemp("nginx"), gunicorn.port) as proxy:
        yield proxy


def login_body(n: int) -> bytes:
    return json.dumps({"email": f"nobody-{n}@example.com", "password": "not-the-password"}).encode()


def json_body(size: int) -> bytes:
    """A JSON object of exactly `size` bytes."""
    return b'{"x": "' + b"a" * (size - 9) + b'"}'


def closed_cleanly(client: KeepAliveClient) -> bool:
    """The server closed the connection with a FIN (not a reset), nothing more after the response."""
    client.sock.settimeout(10)
    try:
        return client.sock.recv(1) == b""
    except ConnectionResetError:
        return False


# --- the file itself, against the app and docker-compose.yml (no nginx needed) -------------------


def _directive(text: str, name: str) -> str:
    values = re.findall(rf"^\s*{name}\s+([^;]+);", text, re.MULTILINE)
    assert len(values) == 1, f"{name}: {values}"
    return values[0].strip()


def _seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m)?", value).groups()
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[unit]


def test_the_config_agrees_with_the_app_gunicorn_and_compose():
    text = SITE.read_text()
    # The body limit is the app's, in the directive and in the 413 bodies nginx answers itself.
    assert int(_directive(text, "client_max_body_size")) == LIMIT == settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    assert text.count(f"exceeds the limit of {LIMIT} bytes") == 3
    # Overwritten, never appended: the app reads the right-most entry (TRUSTED_PROXY_COUNT=1).
    assert re.findall(r"^\s*proxy_set_header\s+X-Forwarded-For\s+([^;]+);", text, re.MULTILINE) == ["$remote_addr"]
    # Timeouts around gunicorn's: read a bit above its worker timeout, idle upstream
    # connections dropped before its keep-alive closes them.
    gunicorn_conf = GUNICORN_CONF.read_text()
    worker_timeout = int(re.search(r"^timeout = (\d+)", gunicorn_conf, re.MULTILINE).group(1))
    gunicorn_keepalive = int(re.search(r"^keepalive = (\d+)", gunicorn_conf, re.MULTILINE).group(1))
    assert worker_timeout < _seconds(_directive(text, "proxy_read_timeout")) <= worker_timeout + 15
    upstream = re.search(r"upstream velro_web \{(.*?)\}", text, re.DOTALL).group(1)
    assert 0 < _seconds(_directive(upstream, "keepalive_timeout")) < gunicorn_keepalive
    assert int(_directive(upstream, "keepalive")) > 0

    # docker-compose.yml: nginx runs this file, publishes what web published, reaches web on
    # the port gunicorn binds; the app trusts exactly one proxy.
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    web, proxy = services["web"], services["nginx"]
    assert "./deploy/nginx/velro.conf:/etc/nginx/conf.d/default.conf:ro" in proxy["volumes"]
    bind_port = web["environment"]["BIND"].rsplit(":", 1)[1]
    assert "ports" not in web
    assert proxy["ports"] == [f"{bind_port}:{bind_port}"]
    assert re.search(rf"^\s*listen {bind_port};", text, re.MULTILINE)
    assert re.search(rf"^\s*server web:{bind_port};", text, re.MULTILINE)
    assert web["environment"]["TRUSTED_PROXY_COUNT"] == "1"
    assert proxy["depends_on"]["web"]["condition"] == "service_healthy"


# --- through a real nginx ------------------------------------------------------------------------


@pytest.mark.django_db
def test_health_over_one_kept_alive_client_connection(nginx):
    with nginx.connect() as client:
        for _ in range(30):
            response = client.request("GET", "/health")
            assert response.status == 200, response.body
            assert response.keep_alive
    lines = nginx.logged(lambda lines: sum(line["path"] == "/health" for line in lines) >= 30)
    served = [line for line in lines if line["path"] == "/health"]
    assert len({line["connection"] for line in served[-30:]}) == 1  # one client connection
    assert served[-1]["connection_requests"] >= 30


def _gunicorn_peer_ports(port: int) -> set[int]:
    """The client-side ports of every TCP connection to 127.0.0.1:<port> (established or closing), from /proc."""
    peers = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if state == "0A":  # LISTEN
                continue
            local_port, remote_port = int(local.split(":")[1], 16), int(remote.split(":")[1], 16)
            if local_port == port:
                peers.add(remote_port)
            elif remote_port == port:
                peers.add(local_port)
    return peers


def _unread_requests(port: int) -> int:
    """Connections to 127.0.0.1:<port> whose received bytes gunicorn has not read yet (/proc's rx_queue)."""
    waiting = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, rx_queue = fields[1], int(fields[4].split(":")[1], 16)
            if int(local.split(":")[1], 16) == port and rx_queue > 0:
                waiting += 1
    return waiting


@pytest.mark.django_db
def test_nginx_reuses_its_connections_to_gunicorn(nginx, gunicorn):
    before = _gunicorn_peer_ports(gunicorn.port)
    for _ in range(20):  # 20 client connections, one request each
        status, _ = http_get(nginx.port, "/health")
        assert status == 200
    new = _gunicorn_peer_ports(gunicorn.port) - before
    # Without upstream keep-alive each request opens (and leaves in TIME_WAIT) its own connection.
    assert len(new) <= 2, f"gunicorn saw {len(new)} new connections for 20 requests"


@pytest.mark.django_db
def test_a_burst_as_large_as_gunicorns_threads_reuses_the_connections_of_the_burst_before(nginx, gunicorn):
    # gunicorn.conf.py's defaults on 2 cores: 5 workers x 8 threads serve 40 requests at
    # once. A smaller upstream cache (it was 16) made nginx open connections for every
    # burst and close them after: accept, set-up and close in gunicorn's Python each time.
    burst = 40
    (worker,) = children(gunicorn.proc.pid)
    clients = [KeepAliveClient(HOST, nginx.port) for _ in range(burst)]

    def one_burst() -> set[int]:
        before = _gunicorn_peer_ports(gunicorn.port)
        # The worker stopped: every request of the burst is in flight on a connection of its own.
        os.kill(worker, signal.SIGSTOP)
        try:
            for client in clients:
                client.sock.sendall(f"GET /health HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            deadline = time.monotonic() + 5
            while _unread_requests(gunicorn.port) < burst:
                assert time.monotonic() < deadline, "nginx did not hold one upstream connection per request"
                time.sleep(0.02)
        finally:
            os.kill(worker, signal.SIGCONT)
        assert [client.read_response().status for client in clients] == [200] * burst
        return _gunicorn_peer_ports(gunicorn.port) - before

    try:
        one_burst()
        again = one_burst()
    finally:
        for client in clients:
            client.close()
    assert len(again) <= 2, f"the second burst of {burst} opened {len(again)} new connections to gunicorn"


@pytest.mark.django_db(transaction=True)
def test_the_app_sees_each_clients_own_address_and_no_forged_one(nginx):
    forged = {"X-Forwarded-For": "1.2.3.4", "X-Real-IP": "1.2.3.4", "Forwarded": "for=1.2.3.4"}
    n = 0

    def login(source: str, headers: dict[str, str] | None = None) -> int:
        nonlocal n
        n += 1
        with nginx.connect(source) as client:
            return client.request("POST", LOGIN, body=login_body(n), headers=headers).status

    # 127.0.0.2 spends its login budget...
    assert [login("127.0.0.2") for _ in range(LOGIN_LIMIT)] == [401] * LOGIN_LIMIT
    assert login("127.0.0.2") == 429
    assert login("127.0.0.2", {"X-Forwarded-For": "5.6.7.8"}) == 429  # ...and no header buys it a new one
    # ...which is not 127.0.0.3's, even when it claims another address each time.
    statuses = [login("127.0.0.3", {**forged, "X-Forwarded-For": f"10.0.0.{i}"}) for i in range(LOGIN_LIMIT)]
    assert statuses == [401] * LOGIN_LIMIT
    assert login("127.0.0.3", forged) == 429

    failures = list(AuditEvent.objects.filter(kind=AuditEvent.Kind.LOGIN_FAILURE).values_list("ip", flat=True))
    assert sorted(failures) == ["127.0.0.2"] * LOGIN_LIMIT + ["127.0.0.3"] * LOGIN_LIMIT


@pytest.mark.django_db(transaction=True)
def test_the_request_id_is_passed_through_or_generated_and_logged_by_both(nginx, gunicorn):
    with nginx.connect("127.0.0.2") as client:
        given = client.request("POST", LOGIN, body=login_body(0), headers={"X-Request-ID": "client-chosen-id-42"})
        generated = client.request("POST", LOGIN, body=login_body(1))
        malformed = client.request("POST", LOGIN, body=login_body(2), headers={"X-Request-ID": "no spaces"})
    assert given.headers["x-request-id"] == "client-chosen-id-42"
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", malformed.headers["x-request-id"])
    ids = [r.headers["x-request-id"] for r in (given, generated, malformed)]
    # The app used nginx's id (its audit row), and nginx logged the same one.
    audited = AuditEvent.objects.filter(kind=AuditEvent.Kind.LOGIN_FAILURE).values_list("request_id", flat=True)
    assert sorted(audited) == sorted(ids)
    nginx.logged(lambda lines: set(ids) <= {line["request_id"] for line in lines if line["path"] == LOGIN})


def _app_413(gunicorn: GunicornServer, path: str, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """The app's own 413 for a body over the limit (refused on its Content-Length, no body sent)."""
    with gunicorn.connect() as client:
        head = [f"POST {path} HTTP/1.1", f"Host: {HOST}", "Content-Type: application/json"]
        head += [f"{name}: {value}" for name, value in {**headers, "Content-Length": str(3 * MB)}.items()]
        response = client.send_raw(("\r\n".join(head) + "\r\n\r\n").encode())
    assert response.status == 413, response.body
    return response.body, response.headers


SURFACES = [
    pytest.param(LOGIN, {}, id="native"),
    pytest.param("/auth/v1/token?grant_type=password", {}, id="gotrue"),
    pytest.param("/auth/v1/signup", {"X-Supabase-Api-Version": "2024-01-01"}, id="gotrue-2024-01-01"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "headers"), SURFACES)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_3_mb_body_gets_the_apps_json_413_and_a_clean_close(nginx, gunicorn, path, headers, framing):
    expected_body, expected_headers = _app_413(gunicorn, path, headers)
    with nginx.connect() as client:
        response = client.request(
            "POST", path, body=json_body(3 * MB), headers=headers, chunked_body=framing == "chunked"
        )
        assert response.status == 413
        assert response.body == expected_body  # byte for byte the app's, in the surface's shape
        assert response.headers["content-type"] == "application/json"
        assert response.headers.get("x-supabase-api-version") == expected_headers.get("x-supabase-api-version")
        assert response.headers["x-request-id"]
        assert not response.keep_alive
        assert closed_cleanly(client)
    with nginx.connect() as client:  # the next connection is served
        assert client.request("GET", "/health").status == 200


@pytest.mark.django_db
def test_the_limit_is_the_apps_to_the_byte(nginx):
    with nginx.connect() as client:
        at_limit = client.request("POST", LOGIN, body=json_body(LIMIT))
        assert at_limit.status == 400, at_limit.body[:300]  # reached the app: not an email and password
        assert at_limit.json()["error"] == "validation_error"
        assert at_limit.keep_alive
        over = client.request("POST", LOGIN, body=json_body(LIMIT + 1))
    assert over.status == 413 and over.json()["error"] == "payload_too_large"


@pytest.mark.django_db
def test_metrics_are_refused_through_nginx_and_served_on_loopback(nginx, gunicorn):
    # The app's answer to a proxied caller (any forwarding header makes one untrusted)...
    app_status, app_body = http_get(gunicorn.port, "/metrics", headers={"X-Forwarded-For": "127.0.0.1"})
    assert app_status == 403
    deadline = time.monotonic() + 5
    while '"GET /metrics" 403' not in gunicorn.log_text():  # its access line, written after the response
        assert time.monotonic() < deadline, gunicorn.log_tail()
        time.sleep(0.05)
    mark = gunicorn.log_mark()
    for path in ("/metrics", "/metrics?format=text", "//metrics"):
        status, body = http_get(nginx.port, path)
        assert (status, body) == (403, app_body), path  # ...is nginx's, word for word
    assert "/metrics" not in gunicorn.log_since(mark)  # nginx answered: gunicorn never saw them
    status, body = http_get(gunicorn.port, "/metrics")
    assert status == 200 and b"velro_http_requests_total" in body
    # The app itself treats proxied requests as untrusted: no timings through nginx.
    with nginx.connect() as proxied, gunicorn.connect() as direct:
        assert "server-timing" not in proxied.request("GET", "/health").headers
        assert "server-timing" in direct.request("GET", "/health").headers


def test_gunicorn_unreachable_is_the_apps_json_503(tmp_path):
    with Nginx(tmp_path / "nginx", upstream_port=free_port()) as proxy, proxy.connect() as client:
        native = client.request("GET", "/health")
        gotrue = client.request("GET", "/auth/v1/health", headers={"X-Supabase-Api-Version": "2024-06-01"})
    # The app's own answer when a dependency is down (velro/errors.py unavailable_response), byte for byte.
    assert native.status == 503 and native.headers["retry-after"] == RETRY_AFTER_SECONDS
    assert native.body == unavailable_response().content
    assert gotrue.status == 503
    assert gotrue.json() == {"code": "unexpected_failure", "message": Unavailable.detail}
    assert gotrue.headers["x-supabase-api-version"] == "2024-01-01"
