"""The benchmark's stock peer (loadtest/peer/): Django + DRF + simplejwt under stock gunicorn.

    with PeerStack(run_dir=..., users=[(email, password), ...]) as peer:
        peer.url  # POST /api/token/, POST /api/token/refresh/, GET /api/me/

- its own venv, var/peer-venv, from loadtest/peer/requirements.txt: created when
  missing, reinstalled when the requirements change (a stamp file holds their
  hash and the venv's Python);
- its own database (default velro_bench_peer), created if missing, migrated;
- the benchmark users seeded (`python -m stockpeer.seed PASSWORD EMAIL...`, one
  call per distinct password);
- `gunicorn -w 2 -b 127.0.0.1:<free port> stockpeer.wsgi`: 2 sync workers, stock
  gunicorn defaults otherwise, under loadtest.supervisor (own process group and
  log, listed in run_dir/pids.json); stopped by close().
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from loadtest import BASE_DIR, LoadTestError
from loadtest.stack import Database
from loadtest.supervisor import HOST, PidRegistry, Process, free_port

PEER_DIR = BASE_DIR / "loadtest" / "peer"
REQUIREMENTS = PEER_DIR / "requirements.txt"
VENV_DIR = BASE_DIR / "var" / "peer-venv"
DEFAULT_DATABASE_URL = "postgres://root@127.0.0.1:5432/velro_bench_peer"
PEER_WORKERS = 2
READY_TIMEOUT = 60.0
INSTALL_TIMEOUT = 900.0


class PeerError(LoadTestError):
    """The peer could not be set up."""


def log(message: str) -> None:
    print(f"[peer] {message}", file=sys.stderr, flush=True)


def _requirements_hash(python: Path) -> str:
    version = subprocess.run(
        [str(python), "-c", "import sys; print(sys.version)"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    return hashlib.sha256(REQUIREMENTS.read_bytes() + version.encode()).hexdigest()[:32]


def ensure_venv(venv: Path = VENV_DIR) -> Path:
    """var/peer-venv with loadtest/peer/requirements.txt installed; returns its bin directory."""
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"creating {venv}")
        base = sys.executable
        # The benchmark may itself run in a venv: the new venv's base is the same interpreter.
        subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    stamp = venv / ".installed-peer"
    digest = _requirements_hash(python)
    if stamp.exists() and stamp.read_text().strip() == digest:
        return venv / "bin"
    log(f"installing {REQUIREMENTS.relative_to(BASE_DIR)} into {venv} (once)")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
    )
    if install.returncode != 0:
        raise PeerError(f"pip install -r {REQUIREMENTS} failed:\n{(install.stdout + install.stderr)[-2000:]}")
    stamp.write_text(digest + "\n")
    return venv / "bin"


class PeerStack:
    """The stock peer on a free loopback port; a context manager (close() stops it)."""

    def __init__(
        self,
        *,
        run_dir: Path,
        users: Sequence[tuple[str, str]] = (),
        database_url: str = DEFAULT_DATABASE_URL,
        workers: int = PEER_WORKERS,
        venv: Path = VENV_DIR,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.users = list(users)
        self.db = Database(database_url)
        if self.db.sqlite:
            raise PeerError("the peer runs on PostgreSQL")
        self.workers = workers
        self.venv = venv
        self.port = 0
        self.url = ""
        self.web: Process | None = None
        self.env: dict[str, str] = {}
        self.pids = PidRegistry(self.run_dir / "peer-pids.json")

    def environment(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("DJANGO_", "DATABASE_", "PYTHON", "VIRTUAL_ENV", "GUNICORN_", "WEB_CONCURRENCY"))
        }
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "stockpeer.settings",
                "PEER_SECRET_KEY": secrets.token_urlsafe(48),
                "PEER_DB_NAME": self.db.name,
                "PEER_DB_HOST": self.db.host,
                "PEER_DB_PORT": str(self.db.port),
                "PEER_DB_USER": self.db.user,
                "PYTHONPATH": str(PEER_DIR),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.db.password:
            env["PGPASSWORD"] = self.db.password
        return env

    def _run(self, bin_dir: Path, *args: str, what: str) -> None:
        done = subprocess.run(
            [str(bin_dir / "python"), *args],
            cwd=PEER_DIR,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise PeerError(f"peer {what} failed:\n{(done.stdout + done.stderr)[-2000:]}")

    def start(self) -> PeerStack:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.pids.reap_stale()
        bin_dir = ensure_venv(self.venv)
        self.env = self.environment()
        self.db.create_if_missing()
        log(f"migrating {self.db.name}")
        self._run(bin_dir, "-m", "django", "migrate", "--noinput", what="migrate")
        by_password: dict[str, list[str]] = {}
        for email, password in self.users:
            by_password.setdefault(password, []).append(email)
        for password, emails in by_password.items():
            self._run(bin_dir, "-m", "stockpeer.seed", password, *emails, what="seed")
        if self.users:
            log(f"seeded {len(self.users)} users")
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        argv = [str(bin_dir / "gunicorn"), "-w", str(self.workers), "-b", f"{HOST}:{self.port}", "stockpeer.wsgi"]
        self.web = Process(
            "peer-gunicorn",
            argv,
            env=self.env,
            log_path=self.run_dir / "peer-gunicorn.log",
            cwd=PEER_DIR,
            registry=self.pids,
        )
        log(f"starting the peer: {' '.join(argv[1:])} (log: {self.web.log_path})")
        self.web.start()
        self.wait_ready()
        return self

    def _answers(self, client: httpx.Client) -> bool:
        try:
            return client.get("/api/me/").status_code == 401
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        with httpx.Client(base_url=self.url, timeout=2.0, trust_env=False) as client:
            self.web.wait_until(lambda: self._answers(client), timeout=timeout, what="GET /api/me/ answering 401")
            # every worker up: a few more answers spread over the workers
            deadline = time.monotonic() + 10
            while (
                time.monotonic() < deadline and self.web.current_log().count("Booting worker with pid") < self.workers
            ):
                time.sleep(0.1)
        log(f"peer ready on {self.url}")

    def login(self, email: str, password: str) -> dict:
        """POST /api/token/: {"access", "refresh"}."""
        with httpx.Client(base_url=self.url, timeout=10.0, trust_env=False) as client:
            response = client.post("/api/token/", json={"username": email, "password": password})
        if response.status_code != 200:
            raise PeerError(f"peer login for {email}: {response.status_code} {response.text[:200]}")
        return response.json()

    def close(self) -> None:
        if self.web is not None:
            with contextlib.suppress(Exception):
                self.web.stop(timeout=15)
        self.pids.clear()

    def __enter__(self) -> PeerStack:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
