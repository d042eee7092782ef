"""The stack starter: Velro on loopback, for one load test run.

    with Stack(run_dir=..., database_url=..., private_redis=True, smtp=True, celery=True) as stack:
        ...  # stack.web.url, stack.db, stack.cache, stack.broker, stack.smtp, stack.worker, stack.beat

In start order:

- the SMTP listener (aiosmtpd, in this process), with `smtp=True`;
- two private redis-servers on free ports (cache and Celery broker), without
  persistence, so either can be stopped and restarted on its port (and comes
  back empty, as a crashed Redis would), with `private_redis=True`; otherwise
  the given `redis_url` / `broker_url`;
- the PostgreSQL database (loopback only): dropped and created with
  `fresh_database=True`, else created if missing; then migrated; dropped again
  at the end with `drop_database=True`;
- gunicorn (gunicorn.conf.py) on a free port, ready once /health answers and
  every worker has logged its warm-up;
- a Celery worker and Celery beat, with `celery=True`.

Every process runs under loadtest.supervisor (its own process group and log file
in `run_dir`); the groups are listed in run_dir/pids.json, so a run on the same
run dir stops what a SIGKILLed earlier run left behind. `close()` stops all of
it, also after a failed start.
"""

from __future__ import annotations

import contextlib
import email
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import redis
from aiosmtpd.controller import Controller

from loadtest import BASE_DIR, LoadTestError
from loadtest.loadgen import is_loopback_host
from loadtest.supervisor import HOST, PidRegistry, Process, children, free_port

PROCESS_READY_TIMEOUT = 90.0
GUNICORN_STOP_TIMEOUT = 25.0


class StackError(LoadTestError):
    """The stack could not be set up."""


def log(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


def venv_bin(name: str) -> str:
    candidate = BASE_DIR / ".venv" / "bin" / name
    if candidate.exists():
        return str(candidate)
    sibling = Path(sys.executable).parent / name
    if sibling.exists():
        return str(sibling)
    raise StackError(f"{name} not found in .venv/bin (create the venv: ./scripts/run.sh or ./scripts/test.sh)")


SECRET_KEY_FILE = BASE_DIR / "var" / "loadtest-secret-key"


def load_test_secret_key() -> str:
    """The load-test stacks' DJANGO_SECRET_KEY: made once, kept in var/ (mode 0600).

    The stacks keep their databases between runs (unless fresh_database), and
    what the database holds under a key derived from the secret (the signing
    keys' private halves) must still decrypt on the next run."""
    try:
        return SECRET_KEY_FILE.read_text().strip()
    except FileNotFoundError:
        pass
    SECRET_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
    candidate = secrets.token_urlsafe(48)
    try:
        fd = os.open(SECRET_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another run made it first: use theirs
        return SECRET_KEY_FILE.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(candidate + "\n")
    return candidate


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


# --- PostgreSQL ---------------------------------------------------------------------------------


class Database:
    """The database of a DATABASE_URL: PostgreSQL on loopback (or SQLite, left alone)."""

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        self.sqlite = parts.scheme.startswith("sqlite")
        if self.sqlite:
            self.name = parts.path
            return
        if parts.scheme not in {"postgres", "postgresql", "pgsql"}:
            raise StackError(f"DATABASE_URL: unsupported scheme {parts.scheme!r}")
        self.host = parts.hostname or HOST
        if not is_loopback_host(self.host):
            raise StackError(f"DATABASE_URL host {self.host!r}: load tests only create databases on loopback")
        self.name = parts.path.lstrip("/")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name):
            raise StackError(f"DATABASE_URL: bad database name {self.name!r}")
        self.port = parts.port or 5432
        self.user = parts.username or "root"
        self.password = parts.password

    def connect(self, dbname: str | None = None, **kwargs: Any) -> psycopg.Connection:
        """A psycopg connection to this database (or to `dbname` on the same server)."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=dbname or self.name,
            connect_timeout=5,
            **kwargs,
        )

    def _admin(self, *statements: str) -> list[Any]:
        try:
            with self.connect("postgres", autocommit=True) as conn:
                results = []
                for sql in statements:
                    cursor = conn.execute(sql)
                    results.append(cursor.fetchone() if sql.startswith("SELECT") else None)
                return results
        except psycopg.Error as exc:
            raise StackError(f"PostgreSQL at {self.host}:{self.port} as {self.user}: {exc}") from exc

    def create_if_missing(self) -> bool:
        """Create the database unless it exists; True when it was created."""
        if self.sqlite:
            return False
        (row,) = self._admin(f"SELECT 1 FROM pg_database WHERE datname = '{self.name}'")
        if row is not None:
            return False
        log(f"creating database {self.name}")
        self._admin(f'CREATE DATABASE "{self.name}"')
        return True

    def recreate(self) -> None:
        log(f"database {self.name}: dropped and created")
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)', f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        try:
            self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        except StackError as exc:
            log(f"could not drop database {self.name}: {exc}")
        else:
            log(f"database {self.name} dropped")

    def migrate(self, env: dict[str, str]) -> None:
        log(f"migrating database {self.name}")
        migrate = subprocess.run(
            [venv_bin("python"), "manage.py", "migrate", "--noinput"],
            cwd=BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if migrate.returncode != 0:
            raise StackError(f"manage.py migrate failed:\n{(migrate.stdout + migrate.stderr)[-2000:]}")


# --- Redis --------------------------------------------------------------------------------------


class RedisServer(Process):
    """A private redis-server on a free loopback port, no persistence; ready when it answers PING."""

    def __init__(self, name: str, *, run_dir: Path, registry: PidRegistry | None = None) -> None:
        self.port = free_port()
        redis_bin = shutil.which("redis-server")
        if redis_bin is None:
            raise StackError("redis-server not found (apt-get install redis-server; ./scripts/test.sh does)")
        argv = [redis_bin, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        argv += ["--daemonize", "no", "--dir", str(run_dir)]
        super().__init__(name, argv, env=dict(os.environ), log_path=run_dir / f"{name}.log", registry=registry)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=1, socket_connect_timeout=1)

    def ping(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self) -> RedisServer:
        super().start()
        self.wait_until(self.ping, timeout=15, what=f"PING on port {self.port}", interval=0.05)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)


# --- SMTP ---------------------------------------------------------------------------------------


@dataclass
class Mail:
    event: str | None
    to: str
    recipients: list[str]
    subject: str
    at: float


class SmtpSink:
    """An aiosmtpd handler: every message, by X-Velro-Event and recipient."""

    def __init__(self) -> None:
        self.mails: list[Mail] = []
        self._lock = threading.Lock()
        self.t0 = time.monotonic()

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.original_content or envelope.content)
        mail = Mail(
            event=message["X-Velro-Event"],
            to=str(message["To"] or ""),
            recipients=[str(r).lower() for r in envelope.rcpt_tos],
            subject=str(message["Subject"] or ""),
            at=round(time.monotonic() - self.t0, 3),
        )
        with self._lock:
            self.mails.append(mail)
        return "250 Message accepted for delivery"

    def snapshot(self) -> list[Mail]:
        with self._lock:
            return list(self.mails)


class SmtpListener:
    """An SMTP listener on a free loopback port, in this process (a thread)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sink = SmtpSink()
        self.controller = Controller(self.sink, hostname=HOST, port=self.port)

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.controller.stop()


# --- gunicorn -----------------------------------------------------------------------------------


class Gunicorn(Process):
    """gunicorn (gunicorn.conf.py) on a free loopback port, with its own Prometheus directory."""

    def __init__(self, *, env: dict[str, str], run_dir: Path, registry: PidRegistry | None = None) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        # prometheus-client multiprocess files of this server only; removed in stop().
        self.metrics_dir = run_dir.resolve() / f"prometheus-{self.port}"
        env = {**env, "BIND": f"{HOST}:{self.port}", "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        argv = [venv_bin("gunicorn"), "-c", "gunicorn.conf.py", "velro.wsgi:application"]
        super().__init__("gunicorn", argv, env=env, log_path=run_dir / "gunicorn.log", registry=registry)

    def start(self, timeout: float = PROCESS_READY_TIMEOUT) -> Gunicorn:
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        log(f"starting gunicorn on {self.url} (log: {self.log_path})")
        super().start()
        self.wait_ready(timeout)
        return self

    def _healthy(self, client: httpx.Client) -> bool:
        try:
            return client.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=2.0, trust_env=False) as client:
            self.wait_until(
                lambda: self._healthy(client), timeout=timeout, what="GET /health answering 200", interval=0.2
            )
        # /health answers as soon as one worker is up; wait (bounded) for every
        # worker to finish its warm-up (post_worker_init), so no run meets a cold one.
        while time.monotonic() < deadline:
            text = self.current_log()
            booted = text.count("Booting worker with pid")
            warmed = len(re.findall(r"worker warmed up|warm-up skipped|warm-up failed", text))
            if booted and warmed >= booted:
                log(f"gunicorn ready: {booted} workers warmed up")
                return
            time.sleep(0.2)
        log("not every gunicorn worker reported its warm-up; going on")

    def worker_pids(self) -> list[int]:
        return children(self.pid) if self.alive else []

    def stop(self, timeout: float = GUNICORN_STOP_TIMEOUT) -> None:
        if self.alive:
            log("stopping gunicorn")  # SIGTERM: in-flight requests finish, workers exit
        super().stop(timeout)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)


# --- the stack ----------------------------------------------------------------------------------


class Stack:
    """Everything a load test runs; close() stops all of it (also after a failed start)."""

    def __init__(
        self,
        *,
        run_dir: Path,
        database_url: str,
        fresh_database: bool = False,
        drop_database: bool = False,
        private_redis: bool = False,
        redis_url: str | None = None,
        broker_url: str | None = None,
        smtp: bool = False,
        celery: bool = False,
        env: dict[str, str] | None = None,
        celery_concurrency: int = 2,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.db = Database(database_url)
        self.fresh_database = fresh_database
        self.drop_database = drop_database
        self.private_redis = private_redis
        self.redis_url = redis_url
        self.broker_url = broker_url
        self.want_smtp = smtp
        self.want_celery = celery
        self.extra_env = dict(env or {})
        self.celery_concurrency = celery_concurrency
        self.smtp: SmtpListener | None = None
        self.cache: RedisServer | None = None
        self.broker: RedisServer | None = None
        self.web: Gunicorn | None = None
        self.worker: Process | None = None
        self.beat: Process | None = None
        self.env: dict[str, str] = {}
        self.db_created = False
        self.worker_generation = 0
        self.pids = PidRegistry(self.run_dir / "pids.json")

    def environment(self) -> dict[str, str]:
        """The environment of web, worker and beat (one secret key for all three)."""
        env = dict(os.environ)
        for name in ("DJANGO_ENV_FILE", "CELERY_BROKER_READ_URL", "CELERY_BROKER_WRITE_URL"):
            env.pop(name, None)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "velro.settings",
                "DJANGO_DEBUG": "false",
                "DJANGO_SECRET_KEY": load_test_secret_key(),
                "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
                "DATABASE_URL": self.db.url,
                # A load test from one IP: with the limits on most requests would be 429.
                "RATELIMIT_ENABLE": "false",
                "PYTHONUNBUFFERED": "1",
            }
        )
        redis_url = self.cache.url if self.cache else self.redis_url
        broker_url = self.broker.url if self.broker else self.broker_url
        if redis_url:
            env["REDIS_URL"] = redis_url
        # Without a broker URL the settings default the broker to REDIS_URL.
        if broker_url:
            env["CELERY_BROKER_URL"] = broker_url
        else:
            env.pop("CELERY_BROKER_URL", None)
        if self.smtp is not None:
            env.update(
                {
                    "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
                    "EMAIL_HOST": HOST,
                    "EMAIL_PORT": str(self.smtp.port),
                    "EMAIL_USE_TLS": "false",
                    "EMAIL_HOST_USER": "",
                    "EMAIL_HOST_PASSWORD": "",
                }
            )
        env.update(self.extra_env)
        return env

    def _process(self, name: str, argv: list[str]) -> Process:
        return Process(name, argv, env=self.env, log_path=self.run_dir / f"{name}.log", registry=self.pids)

    def start(self) -> Stack:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        reaped = self.pids.reap_stale()
        if reaped:
            log(f"stopped {reaped} process groups left behind by an earlier run that was killed")
        for path in self.run_dir.glob("celerybeat-schedule*"):
            path.unlink()
        if self.want_smtp:
            self.smtp = SmtpListener()
            self.smtp.start()
            log(f"SMTP listener on {HOST}:{self.smtp.port}")
        if self.private_redis:
            self.cache = RedisServer("redis-cache", run_dir=self.run_dir, registry=self.pids).start()
            self.broker = RedisServer("redis-broker", run_dir=self.run_dir, registry=self.pids).start()
            log(f"redis-server: cache on port {self.cache.port}, broker on port {self.broker.port}")
        self.env = self.environment()
        if self.fresh_database:
            self.db.recreate()
            self.db_created = True
        else:
            self.db_created = self.db.create_if_missing()
        self.db.migrate(self.env)
        self.web = Gunicorn(env=self.env, run_dir=self.run_dir, registry=self.pids)
        self.web.start()
        if self.want_celery:
            self.start_worker()
            self.start_beat()
        log(f"stack ready: gunicorn {self.web.url}" + (", Celery worker + beat" if self.want_celery else ""))
        return self

    def start_worker(self) -> None:
        """Start the Celery worker (again: a new node name, the same log)."""
        self.worker_generation += 1
        argv = [venv_bin("python"), "-m", "celery", "-A", "velro", "worker", "--pool=prefork"]
        argv += [f"--concurrency={self.celery_concurrency}", "--loglevel=INFO"]
        argv += ["--without-heartbeat", "--without-mingle", "--without-gossip", "-Q", "celery"]
        argv += ["-n", f"loadtest{self.worker_generation}-{os.getpid()}@%h"]
        if self.worker is None:
            self.worker = self._process("celery-worker", argv)
        self.worker.argv = argv
        self.worker.start()
        self.worker.wait_log(" ready.", timeout=PROCESS_READY_TIMEOUT)

    def start_beat(self) -> None:
        """Start Celery beat (again)."""
        if self.beat is None:
            schedule = str(self.run_dir / "celerybeat-schedule")
            argv = [venv_bin("python"), "-m", "celery", "-A", "velro", "beat", "--loglevel=INFO", "-s", schedule]
            self.beat = self._process("celery-beat", argv)
        self.beat.start()
        self.beat.wait_log("beat: Starting", timeout=PROCESS_READY_TIMEOUT)

    def processes(self) -> dict[str, Any]:
        """Which processes of the stack are running (gunicorn: also how many workers)."""
        status: dict[str, Any] = {
            "gunicorn": bool(self.web and self.web.alive),
            "gunicorn_workers": len(self.web.worker_pids()) if self.web else 0,
        }
        if self.want_celery:
            status["celery_worker"] = bool(self.worker and self.worker.alive)
            status["celery_beat"] = bool(self.beat and self.beat.alive)
        if self.private_redis:
            status["redis_cache"] = bool(self.cache and self.cache.alive)
            status["redis_broker"] = bool(self.broker and self.broker.alive)
        return status

    def close(self) -> None:
        for proc in (self.beat, self.worker, self.web, self.cache, self.broker):
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.stop()
        if self.smtp is not None:
            self.smtp.stop()
        self.pids.clear()
        if self.db_created and self.drop_database:
            self.db.drop()

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
