"""HTTP edges: keep-alive connections stay in sync, and client mistakes are 4xx logged without a traceback.

Keep-alive: a view that answers before reading the request body (a 401, 404,
405, 429, 413) leaves the body on the connection. Gunicorn's gthread worker
discarded at most 64 KiB of it, after a response that had already said
`Connection: keep-alive`, then closed the connection: the client's next request
on it failed with "Server disconnected without sending a response" (behind a
proxy reusing upstream connections, another user's request). velro/wsgi.py's
KeepAliveGuard now discards the rest of the body (up to the upload limit)
before the response goes out, or answers `Connection: close`. These tests
talk to a real gunicorn (gunicorn.conf.py) with a raw socket client, several
requests on one connection, as a reverse proxy does.

Client mistakes (a body over the upload limit, a bad Host header, too many
parameters, a malformed multipart body...) were 400s (or 500s on the GoTrue
surface) logged at ERROR with a traceback; now they are 4xx in each surface's
error shape, logged once at WARNING without one.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time

import pytest
from django.core.exceptions import RequestDataTooBig
from django.test import Client

from velro.errors import api_exception_handler
from velro.tests.support import GunicornServer, KeepAliveClient
from velro.wsgi import KeepAliveGuard

KB = 1024
MB = 1024 * 1024
LIMIT = 2_621_440  # DATA_UPLOAD_MAX_MEMORY_SIZE (REQUEST_BODY_MAX_BYTES), the default
OVER_LIMIT = 6 * MB
SIZES = [1 * KB, 100 * KB, 1 * MB]  # all over gunicorn's own 64 KiB drain but the first

# pytest-django creates the test database (which the gunicorn below uses) only
# for a session with tests marked django_db.
uses_gunicorn = pytest.mark.django_db


def json_body(size: int) -> bytes:
    """A JSON object of exactly `size` bytes."""
    return b'{"x": "' + b"a" * (size - 9) + b'"}'


@pytest.fixture(scope="module")
def server(django_db_setup, tmp_path_factory):
    """One real gunicorn for the module: gunicorn.conf.py, one worker, plain logs.

    Signups are limited to 1 an hour per IP, so the second one is a 429
    answered before the body is read (the counters live in Redis, which the
    autouse fixture flushes between tests)."""
    env = {"LOG_FORMAT": "plain", "RATELIMIT_SIGNUP_IP": "1/3600"}
    with GunicornServer(tmp_path_factory.mktemp("gunicorn"), workers=1, env=env) as running:
        yield running


def assert_in_sync(conn: KeepAliveClient, server: GunicornServer) -> None:
    """The next request on the connection is answered (not "Server disconnected...")."""
    try:
        response = conn.request("GET", "/__version")
    except (ConnectionError, OSError) as exc:
        pytest.fail(f"the kept-alive connection was dropped: {exc!r}\n{server.log_tail(1500)}")
    assert response.status == 200, response.body
    assert response.json()["version"]


def assert_closed_by_server(conn: KeepAliveClient) -> None:
    conn.sock.settimeout(5)
    # Closed with unread bytes, the kernel may reset it: either way nothing more comes.
    with contextlib.suppress(ConnectionResetError):
        assert conn.sock.recv(1) == b""


# --- keep-alive stays in sync (real gunicorn, raw socket) -----------------------------------


@uses_gunicorn
@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/api/v1/auth/logout", {"error": "not_authenticated"}),
        ("/api/v1/auth/password", {"error": "not_authenticated"}),
        ("/auth/v1/logout", {"code": 401, "error_code": "no_authorization"}),
    ],
)
def test_a_401_before_the_body_is_read_leaves_the_keep_alive_connection_in_sync(server, path, error):
    with server.connect() as conn:
        for size in SIZES:
            response = conn.request("POST", path, json_body(size))
            assert response.status == 401, (size, response.body)
            assert response.keep_alive, (size, response.headers)
            assert error.items() <= response.json().items(), response.json()
            assert_in_sync(conn, server)


@uses_gunicorn
def test_404s_and_405s_answered_without_reading_the_body_keep_the_connection_in_sync(server):
    with server.connect() as conn:
        for method, path, status in [
            ("POST", "/api/v1/auth/no-such-route", 404),
            ("POST", "/auth/v1/no-such-route", 404),
            ("POST", "/__version", 405),
            ("PUT", "/api/v1/auth/login", 405),
        ]:
            response = conn.request(method, path, json_body(100 * KB))
            assert response.status == status, (method, path, response.body)
            assert response.keep_alive
            assert_in_sync(conn, server)


@uses_gunicorn
def test_a_429_before_the_body_is_read_keeps_the_connection_in_sync(server):
    with server.connect() as conn:
        first = conn.request("POST", "/auth/v1/signup", b"{}")  # the one signup allowed: read, refused
        assert first.status in {400, 422}, first.body
        limited = conn.request("POST", "/auth/v1/signup", json_body(100 * KB))
        assert limited.status == 429, limited.body
        assert limited.json()["error_code"] == "over_request_rate_limit"
        assert limited.keep_alive
        assert_in_sync(conn, server)


@uses_gunicorn
@pytest.mark.parametrize("size", [100 * KB, 1 * MB])
def test_a_chunked_body_the_view_did_not_read_is_discarded_and_the_connection_stays_in_sync(server, size):
    with server.connect() as conn:
        response = conn.request("POST", "/api/v1/auth/logout", json_body(size), chunked_body=True)
        assert response.status == 401, response.body
        assert response.keep_alive
        assert_in_sync(conn, server)


@uses_gunicorn
def test_expect_100_continue_then_an_early_401_keeps_the_connection_in_sync(server):
    with server.connect() as conn:
        response = conn.request("POST", "/api/v1/auth/logout", json_body(100 * KB), expect_continue=True)
        assert response.informational == [100]  # gunicorn says 100 Continue before the app runs
        assert response.status == 401
        assert response.keep_alive
        assert_in_sync(conn, server)


@uses_gunicorn
def test_a_chunked_body_over_the_upload_limit_is_answered_with_connection_close(server):
    # Its size is unknown until it is read: the guard discards up to the limit,
    # then gives up, and the response says so instead of announcing keep-alive.
    with server.connect() as conn:
        response = conn.request("POST", "/api/v1/auth/logout", json_body(LIMIT + MB), chunked_body=True)
        assert response.status == 401
        assert response.headers["connection"] == "close"
        assert_closed_by_server(conn)


@uses_gunicorn
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/v1/auth/login", {"error": "payload_too_large"}),
        ("/api/v1/auth/logout", {"error": "payload_too_large"}),  # 413 before the 401: never read
        ("/auth/v1/token?grant_type=password", {"code": 413, "error_code": "payload_too_large"}),
    ],
)
def test_a_body_over_the_upload_limit_is_a_413_that_closes_the_connection(server, path, expected):
    mark = server.log_mark()
    with server.connect() as conn:
        response = conn.request("POST", path, json_body(OVER_LIMIT))
        assert response.status == 413, response.body
        body = response.json()
        assert expected.items() <= body.items(), body
        assert str(LIMIT) in body.get("detail", body.get("msg", ""))
        # Not worth reading 6 MB to keep the connection: closed, and said so.
        assert response.headers["connection"] == "close"
        assert_closed_by_server(conn)
    with server.connect() as fresh:
        assert_in_sync(fresh, server)
    log = server.log_since(mark)
    assert "WARNING django.security.RequestDataTooBig" in log, log
    assert "Traceback" not in log, log
    assert "ERROR" not in log, log


def test_the_guard_closes_the_connection_when_the_client_stalls_mid_body():
    """A client that announces a body and stops sending: the guard waits its
    deadline, not forever, and the response says Connection: close."""
    from gunicorn.http.body import Body, LengthReader
    from gunicorn.http.unreader import SocketUnreader

    server_side, client_side = socket.socketpair()
    client_side.sendall(b"x" * 100)  # of 1000 announced

    class GunicornResponse:  # start_response is a bound method of gunicorn's Response
        closed = False

        def force_close(self):
            self.closed = True

        def start_response(self, status, headers, exc_info=None):
            self.status = status

    def app(environ, start_response):  # answers without reading the body
        start_response("401 Unauthorized", [("Content-Type", "application/json")])
        return [b"{}"]

    environ = {
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_LENGTH": "1000",
        "wsgi.input": Body(LengthReader(SocketUnreader(server_side), 1000)),
        "gunicorn.socket": server_side,
    }
    response = GunicornResponse()
    started = time.monotonic()
    assert KeepAliveGuard(app, limit=lambda: LIMIT, seconds=0.3)(environ, response.start_response) == [b"{}"]
    assert 0.25 < time.monotonic() - started < 3
    assert response.closed
    assert server_side.gettimeout() is None  # the worker's socket is left as it was
    server_side.close()
    client_side.close()


def test_the_guard_discards_a_body_sent_slowly_within_its_deadline():
    from gunicorn.http.body import Body, LengthReader
    from gunicorn.http.unreader import SocketUnreader

    server_side, client_side = socket.socketpair()
    body = b"x" * (200 * KB)

    def trickle():
        for start in range(0, len(body), 50 * KB):
            client_side.sendall(body[start : start + 50 * KB])
            time.sleep(0.05)

    sender = threading.Thread(target=trickle)
    sender.start()

    class GunicornResponse:
        closed = False

        def force_close(self):
            self.closed = True

        def start_response(self, status, headers, exc_info=None):
            pass

    def app(environ, start_response):
        start_response("404 Not Found", [])
        return [b""]

    stream = Body(LengthReader(SocketUnreader(server_side), len(body)))
    environ = {"SERVER_PROTOCOL": "HTTP/1.1", "CONTENT_LENGTH": str(len(body)), "wsgi.input": stream}
    environ["gunicorn.socket"] = server_side
    response = GunicornResponse()
    KeepAliveGuard(app, limit=lambda: LIMIT, seconds=5)(environ, response.start_response)
    sender.join()
    assert not response.closed
    assert stream.read(1) == b""  # all of it discarded: the next request starts here
    server_side.close()
    client_side.close()


# --- client mistakes: 4xx in the surface's shape, one WARNING, no traceback ----------------


def assert_logged_once_without_traceback(caplog, logger: str) -> None:
    problems = [
        r for r in caplog.records if r.levelno >= logging.ERROR or (r.levelno >= logging.WARNING and r.exc_info)
    ]
    assert problems == [], [(r.levelname, r.name, r.getMessage()) for r in problems]
    # One line per mistake: Django's own "Bad Request: /path" is not added to it.
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in warnings] == [logger], [(r.levelname, r.name, r.getMessage()) for r in warnings]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/api/v1/auth/login", {}, {"error": "payload_too_large"}),
        ("/auth/v1/token?grant_type=password", {}, {"code": 413, "error_code": "payload_too_large"}),
        (
            "/auth/v1/signup",
            {"HTTP_X_SUPABASE_API_VERSION": "2024-01-01"},
            {"code": "payload_too_large"},  # GoTrue's 2024-01-01 shape: {"code", "message"}
        ),
        ("/admin/login/", {}, {"error": "payload_too_large"}),
    ],
)
def test_a_6_mb_body_is_a_413_logged_at_warning_without_a_traceback(client, caplog, path, headers, expected):
    caplog.set_level(logging.INFO)
    response = client.post(path, data=json_body(OVER_LIMIT), content_type="application/json", **headers)
    assert response.status_code == 413, response.content[:300]
    body = response.json()
    assert expected.items() <= body.items(), body
    assert str(LIMIT) in (body.get("detail") or body.get("msg") or body.get("message"))
    assert response["X-Request-ID"]  # answered inside the request context
    assert_logged_once_without_traceback(caplog, "django.security.RequestDataTooBig")


@pytest.mark.django_db
def test_a_body_over_the_limit_is_refused_on_its_content_length_before_any_of_it_is_read(client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * KB
    assert client.post("/api/v1/auth/login", data=json_body(10 * KB), content_type="application/json").status_code in {
        400,
        401,
    }
    response = client.post("/api/v1/auth/login", data=json_body(10 * KB + 1), content_type="application/json")
    assert response.status_code == 413
    assert "10240 bytes" in response.json()["detail"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("surface", "path", "expected"),
    [
        ("native", "/api/v1/auth/login", {"error": "payload_too_large"}),
        ("gotrue", "/auth/v1/token?grant_type=password", {"code": 413, "error_code": "payload_too_large"}),
    ],
)
def test_a_body_too_big_met_inside_a_view_is_a_413_too(client, caplog, monkeypatch, surface, path, expected):
    # Past the edge check (a body without a Content-Length under another
    # server, say): the views' exception handlers answer it the same way.
    monkeypatch.setattr("monitoring.middleware.check_request", lambda request: None)
    response = client.post(path, data=json_body(OVER_LIMIT), content_type="application/json")
    assert response.status_code == 413, response.content[:300]
    assert expected.items() <= response.json().items(), response.json()
    assert_logged_once_without_traceback(caplog, "django.security.RequestDataTooBig")


@pytest.mark.django_db
def test_a_client_mistake_met_inside_an_admin_view_is_a_400_logged_at_warning(client, caplog, monkeypatch):
    # The test client skips CSRF checks, so the admin's login view is the first
    # to read the form: DatabaseUnavailableMiddleware.process_exception answers.
    monkeypatch.setattr("monitoring.middleware.check_request", lambda request: None)
    response = client.post("/admin/login/", _many_params(), "application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert response.json() == {"error": "bad_request", "detail": "Too many parameters"}
    assert_logged_once_without_traceback(caplog, "django.security.TooManyFieldsSent")


def test_the_native_handler_answers_request_data_too_big_with_413(rf):
    request = rf.post("/api/v1/auth/login")
    response = api_exception_handler(RequestDataTooBig("too big"), {"request": request})
    assert response.status_code == 413
    assert response.data["error"] == "payload_too_large"


def _many_params(count: int = 1200) -> str:
    return "&".join(f"p{i}=1" for i in range(count))


def _admin_form_as_a_browser(client):
    """With a CSRF cookie, CsrfViewMiddleware is the first to read the form (process_view)."""
    browser = Client(enforce_csrf_checks=True)
    browser.cookies["csrftoken"] = "x" * 32
    return browser.post("/admin/login/", _many_params(), "application/x-www-form-urlencoded")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("make_request", "status", "expected", "logger"),
    [
        pytest.param(
            lambda c: c.get("/api/v1/auth/me", HTTP_HOST="evil.example"),
            400,
            {"error": "bad_request", "detail": "Invalid Host header"},
            "django.security.DisallowedHost",
            id="Host header not in ALLOWED_HOSTS",
        ),
        pytest.param(
            lambda c: c.get("/admin/", HTTP_HOST="evil.example"),
            400,
            {"error": "bad_request"},
            "django.security.DisallowedHost",
            id="Host header not in ALLOWED_HOSTS, admin",
        ),
        pytest.param(
            lambda c: c.get(f"/api/v1/auth/me?{_many_params()}"),
            400,
            {"error": "bad_request", "detail": "Too many parameters"},
            "django.security.TooManyFieldsSent",
            id="too many query parameters, native",
        ),
        pytest.param(
            lambda c: c.post(f"/auth/v1/token?grant_type=password&{_many_params()}", {}, "application/json"),
            400,
            {"code": 400, "error_code": "validation_failed", "msg": "Too many parameters"},
            "django.security.TooManyFieldsSent",
            id="too many query parameters, GoTrue",
        ),
        pytest.param(
            lambda c: c.post("/admin/login/", _many_params(), "application/x-www-form-urlencoded"),
            400,
            {"error": "bad_request", "detail": "Too many parameters"},
            "django.security.TooManyFieldsSent",
            id="too many form fields, admin",
        ),
        pytest.param(
            _admin_form_as_a_browser,
            400,
            {"error": "bad_request", "detail": "Too many parameters"},
            "django.security.TooManyFieldsSent",
            id="too many form fields, admin, read by the CSRF check",
        ),
        pytest.param(
            lambda c: c.post("/admin/login/", b"garbage", "multipart/form-data"),
            400,
            {"error": "bad_request", "detail": "Malformed multipart body"},
            "velro.errors",
            id="multipart body without a boundary, admin",
        ),
        pytest.param(
            lambda c: c.generic("POST", "/api/v1/auth/login", b"{}", "application/json", CONTENT_LENGTH="12abc"),
            400,
            {"error": "bad_request"},
            "velro.errors",
            id="Content-Length that is not a number",
        ),
        pytest.param(
            lambda c: c.post("/api/v1/auth/login", "{", "application/json"),
            400,
            {"error": "invalid_json"},
            "django.request",
            id="invalid JSON",
        ),
        pytest.param(
            lambda c: c.post("/auth/v1/token?grant_type=password", b'{"email": "\xff"}', "application/json"),
            400,
            {"code": 400, "error_code": "bad_json"},
            "django.request",
            id="invalid UTF-8 in a JSON body",
        ),
    ],
)
def test_client_mistakes_are_4xx_logged_once_at_warning_without_a_traceback(
    client, caplog, make_request, status, expected, logger
):
    caplog.set_level(logging.INFO)
    response = make_request(client)
    assert response.status_code == status, response.content[:300]
    body = response.json()
    assert expected.items() <= body.items(), body
    assert_logged_once_without_traceback(caplog, logger)


@pytest.mark.django_db
def test_invalid_utf8_in_a_query_string_is_not_an_error(client, caplog):
    caplog.set_level(logging.INFO)
    response = client.get("/auth/v1/settings?x=%ff%fe")
    assert response.status_code == 200
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_warmed_up_worker_has_frozen_its_start_up_objects(server):
    """Out of the collector's sight, a full collection no longer walks them (velro.warmup)."""
    frozen = re.search(r"worker warmed up \((\d+) start-up objects frozen\)", server.log_text())
    assert frozen is not None, server.log_tail(1500)
    assert int(frozen.group(1)) > 10_000  # Django and the apps: ~150,000
