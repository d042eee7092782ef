"""Test support: a real gunicorn for a test, and a raw HTTP/1.1 keep-alive client.

    with GunicornServer(tmp_path, workers=2) as server:
        status, body = http_get(server.port, "/health")
        with server.connect() as conn:          # one kept-alive connection
            first = conn.request("POST", "/api/v1/auth/logout", body=b"{}")
            second = conn.request("GET", "/__version")

GunicornServer runs gunicorn with the repository's gunicorn.conf.py (gthread,
keep-alive...) on a free port, against this test run's database, Redis and
broker, with its own Prometheus directory; it waits until the app answers,
captures gunicorn's and the app's log into a file (`log_text()`), and stops
gunicorn (SIGTERM, then SIGKILL to its process group) on exit: it runs under
the load tests' process supervisor (loadtest.supervisor.Process). The gunicorn sees the test database
only when the test makes it exist (`django_db_setup`, or a `db` /
`transactional_db` test), and sees rows only if they are committed
(`transaction=True`).

KeepAliveClient is a plain socket: it writes exactly the bytes given
(Content-Length or chunked bodies, any header), writes the body from a thread
while it reads the response (so a server that answers before reading a large
body cannot deadlock it), reads a response by its framing, and leaves the
connection open for the next request, which is how a reverse proxy reuses its
upstream connections.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from loadtest.supervisor import HOST, Process, free_port

BASE_DIR = Path(settings.BASE_DIR)
GUNICORN = Path(sys.executable).parent / "gunicorn"


def user_exists(name: str) -> bool:
    """Is there an account called `name` on this machine?"""
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def database_url() -> str:
    """DATABASE_URL of the database this test process uses (the test database once it exists)."""
    from django.db import connection

    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] or ""
    if s.get("PASSWORD"):
        auth += f":{s['PASSWORD']}"
    return f"postgres://{auth}@{s['HOST'] or HOST}:{s['PORT'] or 5432}/{s['NAME']}"


def http_get(port: int, path: str, timeout: float = 10, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET on a new connection (Connection: close): status and body."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- gunicorn ----------------------------------------------------------------------------------


class GunicornServer:
    """A real gunicorn (gunicorn.conf.py) serving velro.wsgi on a free port; a context manager.

    Supervised by loadtest.supervisor.Process: its own process group, its log
    file, stopped with SIGTERM then SIGKILL to the whole group (the workers too).
    """

    def __init__(
        self,
        directory: Path,
        *,
        workers: int = 1,
        threads: int | None = None,
        env: dict[str, str] | None = None,
        ready_path: str = "/__version",
        startup_timeout: float = 60,
        stop_timeout: float = 30,
    ) -> None:
        self.directory = Path(directory)
        self.port = free_port()
        self.metrics_dir = self.directory / "prometheus"
        self.log_path = self.directory / "gunicorn.log"
        self.workers = workers
        self.threads = threads
        self.extra_env = dict(env or {})
        self.ready_path = ready_path
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def proc(self) -> subprocess.Popen | None:
        """The gunicorn master's Popen (None before start())."""
        return None if self.process is None else self.process.popen

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("DJANGO_ENV_FILE", None)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "velro.settings",
                "BIND": f"{HOST}:{self.port}",
                "WEB_CONCURRENCY": str(self.workers),
                "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
                "DATABASE_URL": database_url(),
                "REDIS_URL": settings.REDIS_URL,
                "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
                "DJANGO_SECRET_KEY": settings.SECRET_KEY,
                "DJANGO_ALLOWED_HOSTS": f"{HOST},localhost",
                "DJANGO_DEBUG": "false",
                "DB_POOL_MIN_SIZE": "1",
                "PYTHONPATH": str(BASE_DIR),
            }
        )
        if self.threads is not None:
            env["GUNICORN_THREADS"] = str(self.threads)
        env.update(self.extra_env)
        return env

    def start(self) -> GunicornServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.metrics_dir.mkdir(exist_ok=True)
        self.process = Process(
            "gunicorn",
            [GUNICORN, "-c", "gunicorn.conf.py", "velro.wsgi:application"],
            env=self.environment(),
            log_path=self.log_path,
            cwd=BASE_DIR,
            banner=False,  # the log is gunicorn's and the app's only
            fresh_log=False,
        )
        self.process.start()
        try:
            self.process.wait_until(
                self._answers, timeout=self.startup_timeout, what=f"GET {self.ready_path} answering 200"
            )
            # Every worker, not only the first: a test that spreads requests over
            # the workers must not find one still warming up (its argon2 step).
            self.process.wait_until(
                self._all_warmed_up, timeout=self.startup_timeout, what=f"{self.workers} workers warmed up"
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _all_warmed_up(self) -> bool:
        # gunicorn.conf.py's post_worker_init logs one of these per worker.
        text = self.log_text()
        done = sum(text.count(line) for line in ("worker warmed up", "warm-up failed", "warm-up skipped"))
        return done >= self.workers

    def _answers(self) -> bool:
        try:
            return http_get(self.port, self.ready_path, timeout=2)[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=self.stop_timeout)

    def __enter__(self) -> GunicornServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    def log_mark(self) -> int:
        """Where the log ends now: `log_since(mark)` is what was logged after."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_since(self, mark: int, settle: float = 0.2) -> str:
        time.sleep(settle)  # the worker writes its log lines after the response
        with self.log_path.open("rb") as log:
            log.seek(mark)
            return log.read().decode(errors="replace")

    def connect(self, timeout: float = 10) -> KeepAliveClient:
        return KeepAliveClient(HOST, self.port, timeout=timeout)


# --- a raw HTTP/1.1 keep-alive client ---------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes
    informational: list[int] = field(default_factory=list)  # 1xx seen before it (100 Continue)
    send_error: BaseException | None = None  # writing the request failed (the server closed early)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"


def chunked(body: bytes, size: int = 16 * 1024) -> bytes:
    """`body` in Transfer-Encoding: chunked framing."""
    pieces = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)]
    return b"".join(pieces) + b"0\r\n\r\n"


class KeepAliveClient:
    """One HTTP/1.1 connection over a plain socket, reused request after request."""

    def __init__(self, host: str, port: int, timeout: float = 10) -> None:
        self.host = host
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buffer = b""

    def __enter__(self) -> KeepAliveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        chunked_body: bool = False,
        expect_continue: bool = False,
    ) -> RawResponse:
        """Send one request (Content-Length framing, or chunked) and read its response."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        all_headers: dict[str, str] = {"Content-Type": "application/json"} if body or chunked_body else {}
        all_headers.update(headers or {})
        if chunked_body:
            all_headers["Transfer-Encoding"] = "chunked"
            payload = chunked(body)
        else:
            if body or method in {"POST", "PUT", "PATCH"}:
                all_headers["Content-Length"] = str(len(body))
            payload = body
        if expect_continue:
            all_headers["Expect"] = "100-continue"
        lines += [f"{name}: {value}" for name, value in all_headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return self.send_raw(head, payload)

    def send_raw(self, head: bytes, payload: bytes = b"") -> RawResponse:
        """Write `head` then `payload` (from a thread) and read the response."""
        errors: list[BaseException] = []

        def write() -> None:
            try:
                self.sock.sendall(head)
                if payload:
                    self.sock.sendall(payload)
            except OSError as exc:  # the server answered and closed before reading it all
                errors.append(exc)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        try:
            response = self.read_response()
        finally:
            writer.join(timeout=30)
        response.send_error = errors[0] if errors else None
        return response

    # reading

    def _fill(self) -> None:
        data = self.sock.recv(256 * 1024)
        if not data:
            raise ConnectionError("Server disconnected without sending a response")
        self._buffer += data

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._fill()
        head, self._buffer = self._buffer.split(marker, 1)
        return head

    def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def read_response(self) -> RawResponse:
        informational = []
        while True:
            head = self._read_until(b"\r\n\r\n").decode("latin-1")
            status_line, *header_lines = head.split("\r\n")
            status = int(status_line.split()[1])
            headers: dict[str, str] = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if 100 <= status < 200:
                informational.append(status)
                continue
            break
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self._read_until(b"\r\n")  # no trailers
                    break
                parts.append(self._read_exactly(size))
                self._read_exactly(2)
            body = b"".join(parts)
        else:
            body = self._read_exactly(int(headers.get("content-length", "0")))
        return RawResponse(status=status, headers=headers, body=body, informational=informational)


# --- a TCP proxy a test can cut ---------------------------------------------------------------


class TcpProxy:
    """127.0.0.1:<port> -> target, byte for byte, until `cut()`: then every
    open connection is closed and new ones are refused (the listener is gone),
    which is what a node sees when its link to a service drops."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cut = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()

    def _accept(self) -> None:
        while not self._cut.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._cut.is_set():
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._cut.set()
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()


# --- racing threads ---------------------------------------------------------------------------


def run_concurrently(work: Any, n: int = 6) -> list:
    """Run `work()` in `n` threads released at once by a barrier; their results
    (every thread's database connection closed after). Fails on any exception."""
    from django.db import connections

    barrier = threading.Barrier(n)
    results: list = []
    errors: list[BaseException] = []

    def runner() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(work())
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=runner) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    return results


# --- a stalled database ---------------------------------------------------------------------------


def second_connection(*, app_timeouts: bool = True, **kwargs: Any) -> Any:
    """A psycopg connection of its own to the test database, beside Django's
    (to hold a lock, watch pg_stat_activity, end a backend); `kwargs` for
    psycopg.connect. With `app_timeouts=False`, without the statement, lock
    and idle-in-transaction timeouts the settings give every connection (a
    locker that must outlast them, a check of what a plain session shows)."""
    import psycopg
    from django.db import connection

    params = connection.get_connection_params()
    for name in ("cursor_factory", "context"):  # Django's own, not psycopg.connect's
        params.pop(name, None)
    if not app_timeouts:
        params.pop("options", None)  # the settings' `-c ..._timeout=` options
    return psycopg.connect(**{**params, **kwargs})


@contextlib.contextmanager
def stalled_inserts(table: str, seconds: int = 5) -> Any:
    """Every INSERT into `table` sleeps `seconds` first (a committed BEFORE INSERT trigger)."""
    from django.db import connection

    name = f"velro_test_stall_{table}"
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$"
            f" BEGIN PERFORM pg_sleep({int(seconds)}); RETURN NEW; END $$"
        )
        cursor.execute(f"CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
            cursor.execute(f"DROP FUNCTION IF EXISTS {name}()")


# --- tools the integration tests need ---------------------------------------------------------------


def required_binary(name: str, why: str) -> str:
    """The path of Debian's `name` (scripts/test.sh installs it): a CI run without it
    fails loudly (`why` says which tests need it); a local run skips."""
    import shutil

    import pytest

    found = shutil.which(name) or next(
        (path for path in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(path, os.X_OK)), None
    )
    if found is None:
        reason = f"{name} is not installed (Debian/Ubuntu: apt-get install {name})"
        if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
            pytest.fail(f"{reason}: CI must run {why}", pytrace=False)
        pytest.skip(reason)
    return found
