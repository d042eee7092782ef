"""The real SMTP listener and Celery workers, for the tests of every app that sends work to them.

The fixtures run the real thing: an SMTP listener (aiosmtpd) in this
process, and Celery workers as subprocesses on the real Redis broker, pointed
at the very test database pytest-django created (tests using them are
`django_db(transaction=True)`: the worker is another process, so the data it
reads must be committed).

A conftest that wants them imports them (`from notifications.tests.support
import celery_worker, smtp_server`): notifications/tests/conftest.py,
referrals/tests/conftest.py; velro/tests import them from the latter.
"""

from __future__ import annotations

import contextlib
import email
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from aiosmtpd.controller import Controller
from django.conf import settings as django_settings
from django.db import connection

from velro.tasks import enqueue_reset

BASE_DIR = Path(__file__).resolve().parents[2]

# Worker timings: short enough that a killed worker's message comes back
# within a test, and consistent with the settings' rule visibility > hard limit.
WORKER_VISIBILITY_TIMEOUT = 10
WORKER_TASK_TIME_LIMIT = 5
WORKER_TASK_SOFT_TIME_LIMIT = 4
WORKER_READY_TIMEOUT = 30.0


@pytest.fixture(autouse=True)
def _enqueue_breaker_closed() -> Iterator[None]:
    # A previous test that saw the broker down must not make this one skip it.
    enqueue_reset()
    yield
    enqueue_reset()


def wait_until(predicate: Callable[[], object], *, timeout: float, interval: float = 0.05, what: str = "") -> object:
    """Poll `predicate` until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what or predicate!r}")
        time.sleep(interval)


# --- SMTP ---------------------------------------------------------------------------------


class SmtpServer:
    """What a real SMTP listener received: parsed messages, envelopes, arrival times."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.messages: list[Message] = []
        self.envelope_recipients: list[list[str]] = []
        self.received_at: list[float] = []  # time.perf_counter() of each arrival
        self._lock = threading.Lock()

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        message = email.message_from_bytes(envelope.original_content or envelope.content)
        with self._lock:
            self.messages.append(message)
            self.envelope_recipients.append(list(envelope.rcpt_tos))
            self.received_at.append(time.perf_counter())
        return "250 Message accepted for delivery"

    def snapshot(self) -> list[Message]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Message]:
        """Wait (bounded) until at least `count` messages arrived; return them all."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.snapshot()
            if len(messages) >= count:
                return messages
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"SMTP: expected >= {count} messages within {timeout:.1f} s, got {len(messages)}: "
                    f"{[(m['To'], m['Subject'], m['X-Velro-Event']) for m in messages]}"
                )
            time.sleep(0.02)

    def to(self, address: str) -> list[Message]:
        return [m for m in self.snapshot() if address.lower() in (m["To"] or "").lower()]

    def events(self) -> Counter[str]:
        return Counter(m["X-Velro-Event"] for m in self.snapshot())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def smtp_server(settings) -> Iterator[SmtpServer]:
    host, port = "127.0.0.1", _free_port()
    server = SmtpServer(host, port)
    controller = Controller(server, hostname=host, port=port)
    controller.start()
    # The test process sends too (the sweeper and the nightly sync run here).
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = host
    settings.EMAIL_PORT = port
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_HOST_USER = ""
    settings.EMAIL_HOST_PASSWORD = ""
    try:
        yield server
    finally:
        controller.stop()


# --- Celery workers ----------------------------------------------------------------------------


def _broker() -> redis.Redis:
    return redis.Redis.from_url(django_settings.CELERY_BROKER_URL, socket_timeout=2, socket_connect_timeout=2)


def broker_purge() -> None:
    """Empty the `celery` queue (all priorities) and kombu's unacked bookkeeping."""
    client = _broker()
    try:
        keys = [key for key in client.scan_iter(match="celery*")]
        keys += [b"unacked", b"unacked_index", b"unacked_mutex"]
        client.delete(*keys)
    finally:
        client.close()


def broker_unacked_delivered_at() -> dict[str, float]:
    """Unacked (delivered, not yet acknowledged) messages: delivery tag -> delivery time."""
    client = _broker()
    try:
        return {tag.decode(): score for tag, score in client.zrange("unacked_index", 0, -1, withscores=True)}
    finally:
        client.close()


def worker_database_url() -> str:
    db = connection.settings_dict
    user = quote(db.get("USER") or "", safe="")
    password = quote(db.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or "5432"
    return f"postgres://{auth}{host}:{port}/{db['NAME']}"


class Worker:
    """One `celery -A velro worker` subprocess, in its own process group."""

    def __init__(self, name: str, process: subprocess.Popen, log_path: Path) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path

    def __repr__(self) -> str:
        return f"<Worker {self.name} pid={self.process.pid}>"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def messages(self) -> list[str]:
        """The log's messages, whether the log format is plain text or JSON lines."""
        messages = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict) and isinstance(record.get("message"), str):
                    messages.append(record["message"])
                    continue
            messages.append(line)
        return messages

    def wait_ready(self, timeout: float = WORKER_READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while " ready." not in self.log():
            if not self.alive:
                raise AssertionError(f"worker {self.name} exited ({self.process.returncode}):\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"worker {self.name} not ready within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def task_ids(self, task_name: str, event: str = "received") -> list[str]:
        """Ids of `task_name` tasks this worker logged as received/succeeded."""
        pattern = re.compile(rf"Task {re.escape(task_name)}\[([0-9a-f-]+)\] {event}")
        return [match.group(1) for message in self.messages() if (match := pattern.search(message))]

    def result_of(self, task_id: str) -> str | None:
        """The logged return value of a succeeded task, or None if not (yet) succeeded."""
        pattern = re.compile(rf"\[{re.escape(task_id)}\] succeeded in [0-9.e-]+s: (.*)", re.DOTALL)
        for message in self.messages():
            if match := pattern.search(message):
                return match.group(1).strip()
        return None

    def kill(self) -> None:
        """SIGKILL the main process and its pool children at once: nothing gets acknowledged."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self) -> None:
        if self.alive:
            self.process.send_signal(signal.SIGTERM)  # warm shutdown of the main process

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL to the whole group after `timeout` s."""
        self.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):  # whatever is left of the group (pool children)
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.alive:
            self.process.wait(timeout=10)


@pytest.fixture
def celery_worker(smtp_server, tmp_path, settings) -> Iterator[Callable[..., Worker]]:
    """Factory: `celery_worker(name="w1", concurrency=1, env={...}, wait=True, python=...) -> Worker`.

    `python` is the interpreter the worker runs with (this test run's by default;
    velro/tests/test_runtime_install.py passes a venv built from requirements.txt alone).

    The broker queue is purged once, when the fixture is set up, so a test may
    kill a worker and start another that gets the first one's unacked message.
    """
    broker_purge()
    workers: list[Worker] = []
    base_env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "velro.settings",
        "DATABASE_URL": worker_database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "REDIS_URL": settings.REDIS_URL,
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "DJANGO_ALLOWED_HOSTS": ",".join(settings.ALLOWED_HOSTS),
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": smtp_server.host,
        "EMAIL_PORT": str(smtp_server.port),
        "EMAIL_USE_TLS": "false",
        "EMAIL_HOST_USER": "",
        "EMAIL_HOST_PASSWORD": "",
        "CELERY_VISIBILITY_TIMEOUT": str(WORKER_VISIBILITY_TIMEOUT),
        "CELERY_TASK_TIME_LIMIT": str(WORKER_TASK_TIME_LIMIT),
        "CELERY_TASK_SOFT_TIME_LIMIT": str(WORKER_TASK_SOFT_TIME_LIMIT),
        "PYTHONUNBUFFERED": "1",
    }
    # Celery reads these from the environment before its own config.
    for name in ("CELERY_BROKER_READ_URL", "CELERY_BROKER_WRITE_URL"):
        base_env.pop(name, None)

    def start(
        name: str = "w1",
        *,
        concurrency: int = 1,
        env: dict[str, str] | None = None,
        wait: bool = True,
        python: str | os.PathLike[str] = sys.executable,
    ) -> Worker:
        log_path = tmp_path / f"celery-{name}-{len(workers)}.log"
        command = [
            os.fspath(python),
            "-m",
            "celery",
            "-A",
            "velro",
            "worker",
            "--pool=prefork",
            f"--concurrency={concurrency}",
            "--loglevel=INFO",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
            "-Q",
            "celery",
            "-n",
            f"{name}-{os.getpid()}@%h",
        ]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=BASE_DIR,
                env={**base_env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg reaches the pool too
            )
        worker = Worker(name, process, log_path)
        workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    try:
        yield start
    finally:
        for worker in workers:
            worker.terminate()  # all at once: the warm shutdowns overlap
        for worker in workers:
            worker.stop()
        for worker in workers:
            # Shown by pytest only when the test failed.
            print(f"\n----- {worker!r} log tail ({worker.log_path}) -----\n{worker.log_tail()}")
