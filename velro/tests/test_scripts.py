"""The scripts a newcomer and an operator use: run.sh, manage.sh and services.sh's venv stamp.

The README's run command runs as a newcomer runs it: ./scripts/run.sh on a fresh checkout.

The embedded-default test runs it inside a network namespace of its own, where
nothing listens on 127.0.0.1 (no PostgreSQL, no Redis, no SMTP), and walks the
whole flow over HTTP from inside that namespace. The venv is the suite's own
(VENV_DIR): the namespace has no network to install from.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)  # the suite's venv: run.sh gets it through VENV_DIR

pytestmark = pytest.mark.integration


def fresh_checkout(destination: Path) -> Path:
    """The tracked files as they are in the working tree: what a clone gives."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = REPO / name.decode()
        if source.is_file():
            target = destination / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a newcomer's shell: none of the suite's service variables."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "DATABASE_", "REDIS_", "CELERY_", "EMAIL_", "GOTRUE_", "PROMETHEUS_"))
    }
    env.pop("BIND", None)
    env.update({"VENV_DIR": str(VENV), "PYTHONDONTWRITEBYTECODE": "1", **extra})
    return env


# --- one install stamp for run.sh and test.sh -------------------------------------------------------

FAKE_PYTHON = """#!/usr/bin/env bash
# A venv python that records pip runs instead of installing anything.
if [[ "$1" == -m && "$2" == pip ]]; then
    echo "pip ${*:3}" >>"$(dirname "$0")/../pip-calls"
    exit 0
fi
exec python3 "$@"
"""


def test_installing_the_dev_requirements_also_satisfies_the_run_scripts_runtime_requirements(tmp_path):
    (tmp_path / "requirements.txt").write_text("# runtime\n")
    (tmp_path / "requirements-dev.txt").write_text("-r requirements.txt\n# tools\n")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(FAKE_PYTHON)
    (venv / "bin" / "python").chmod(0o755)

    def ensure(*files: str) -> list[str]:
        subprocess.run(
            ["bash", "-c", f'source {REPO}/scripts/services.sh && ensure_venv "$@"', "ensure", *files],
            cwd=tmp_path,
            env={**os.environ, "VENV_DIR": str(venv)},
            check=True,
            capture_output=True,
        )
        calls = venv / "pip-calls"
        return [line for line in calls.read_text().splitlines() if "-r" in line] if calls.exists() else []

    assert len(ensure("requirements-dev.txt")) == 1  # test.sh installs
    assert len(ensure("requirements.txt")) == 1  # run.sh: nothing to do
    assert len(ensure("requirements-dev.txt")) == 1  # test.sh again: nothing to do
    (tmp_path / "requirements.txt").write_text("# runtime, changed\n")
    assert len(ensure("requirements.txt")) == 2  # a changed file is installed again


# --- configured services that cannot be reached --------------------------------------------------


@pytest.mark.parametrize(
    ("name", "url", "address"),
    [
        ("DATABASE_URL", "postgres://root@127.0.0.1:1/velro", "127.0.0.1:1"),
        ("REDIS_URL", "redis://127.0.0.1:2/0", "127.0.0.1:2"),
        ("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:3//", "127.0.0.1:3"),
    ],
)
def test_a_configured_service_that_cannot_be_reached_stops_run_sh_with_one_line_naming_it(tmp_path, name, url, address):
    checkout = fresh_checkout(tmp_path / "velro")
    result = subprocess.run(
        ["bash", "scripts/run.sh"],
        cwd=checkout,
        env=_clean_env(**{name: url}),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, result.stderr
    assert name in errors[0] and address in errors[0], errors
    assert "Traceback" not in result.stderr


# --- the embedded default in a namespace with nothing in it ------------------------------------------


@contextlib.contextmanager
def empty_network_namespace():
    """A network namespace with only its loopback up: 127.0.0.1 has no services."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make a network namespace")
    name = f"velro-e2e-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


# Runs inside the namespace: the newcomer's walk through the API, over HTTP.
CLIENT = r"""
import json, sys, time, urllib.error, urllib.request

BASE = "http://127.0.0.1:8000"
statuses = []

def call(method, path, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, method=method, data=data)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, payload = error.code, error.read()
    statuses.append((method, path, status))
    return status, (json.loads(payload) if payload else None)

deadline = time.monotonic() + 240
while True:
    try:
        if urllib.request.urlopen(BASE + "/health", timeout=5).status == 200:
            break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("run.sh never answered /health")
    time.sleep(0.5)

steps = {}
status, referrer = call("POST", "/api/v1/auth/signup",
                        {"email": "ada@example.test", "password": "correct horse battery"})
steps["signup"] = status
code = referrer["user"]["referral_code"]
status, referred = call("POST", "/api/v1/auth/signup",
                        {"email": "bob@example.test", "password": "tr0ub4dor and 3", "referral_code": code})
steps["signup_with_code"] = status
status, login = call("POST", "/api/v1/auth/login", {"email": "bob@example.test", "password": "tr0ub4dor and 3"})
steps["login"] = status
status, refreshed = call("POST", "/api/v1/auth/refresh", {"refresh_token": login["refresh_token"]})
steps["refresh"] = status
status, me = call("GET", "/api/v1/auth/me", token=refreshed["access_token"])
steps["me"] = status
steps["me_email"] = me["email"]
status, key = call("POST", "/api/v1/auth/api-keys", {"name": "ci"}, token=refreshed["access_token"])
steps["api_key"] = status
status, _ = call("POST", "/api/v1/auth/logout", {}, token=refreshed["access_token"])
steps["logout"] = status
status, _ = call("GET", "/api/v1/auth/me", token=refreshed["access_token"])
steps["me_after_logout"] = status

deadline = time.monotonic() + 90  # the file-system broker polls once a second
while True:
    status, mine = call("GET", "/api/v1/referrals/me", token=referrer["access_token"])
    if mine and mine["counts"].get("credited") == 1:
        steps["credited"] = True
        break
    if time.monotonic() > deadline:
        steps["credited"] = mine
        break
    time.sleep(1)
steps["server_errors"] = [entry for entry in statuses if entry[2] >= 500]
print(json.dumps(steps))
"""


def _wait_for_mail(mail_dir: Path, count: int, timeout: float) -> list[Path]:
    deadline = time.monotonic() + timeout
    while True:
        messages = sorted(mail_dir.glob("*.eml")) if mail_dir.is_dir() else []
        if len(messages) >= count or time.monotonic() > deadline:
            return messages
        time.sleep(0.5)


def test_run_sh_with_nothing_reachable_serves_the_whole_flow_on_the_embedded_default(tmp_path):
    checkout = fresh_checkout(tmp_path / "velro")
    log_path = tmp_path / "run.log"
    with empty_network_namespace() as namespace, log_path.open("wb") as log:
        run = subprocess.Popen(
            ["ip", "netns", "exec", namespace, "bash", "scripts/run.sh"],
            cwd=checkout,
            env=_clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            client = subprocess.run(
                ["ip", "netns", "exec", namespace, sys.executable, "-c", CLIENT],
                capture_output=True,
                text=True,
                timeout=420,
            )
            banner = log_path.read_text(errors="replace")
            assert client.returncode == 0, f"{client.stderr}\n--- run.sh ---\n{banner[-4000:]}"
            steps = json.loads(client.stdout.strip().splitlines()[-1])
            assert steps["server_errors"] == [], steps
            assert steps["signup"] == steps["signup_with_code"] == 201, steps
            assert steps["login"] == steps["refresh"] == steps["me"] == 200, steps
            assert steps["me_email"] == "bob@example.test"
            assert steps["api_key"] == 201, steps
            assert steps["logout"] == 204 and steps["me_after_logout"] == 401, steps
            assert steps["credited"] is True, f"{steps}\n--- run.sh ---\n{banner[-4000:]}"

            # Emails: the two welcomes and the referral credit, as files.
            messages = _wait_for_mail(checkout / "var" / "mail", 3, timeout=60)
            assert len(messages) >= 3, f"{messages}\n{log_path.read_text(errors='replace')[-3000:]}"
            text = "\n".join(path.read_text(errors="replace") for path in messages)
            assert "ada@example.test" in text and "bob@example.test" in text

            # The banners say what was chosen, and where the mail goes.
            assert "using embedded SQLite" in banner
            assert "local-memory cache" in banner and "file-system Celery broker" in banner
            assert "var/mail/" in banner

            # The operator path: createsuperuser against the very database run.sh uses.
            admin = subprocess.run(
                ["ip", "netns", "exec", namespace, "bash", "scripts/manage.sh", "createsuperuser", "--noinput"],
                cwd=checkout,
                env=_clean_env(DJANGO_SUPERUSER_EMAIL="root@example.test", DJANGO_SUPERUSER_PASSWORD="s3cret-Admin-pw"),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert admin.returncode == 0, admin.stderr[-3000:]
            count = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    namespace,
                    "bash",
                    "scripts/manage.sh",
                    "shell",
                    "-c",
                    "from accounts.models import User; print(User.objects.filter(is_superuser=True).count())",
                ],
                cwd=checkout,
                env=_clean_env(),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert count.stdout.strip().splitlines()[-1] == "1", count.stderr[-3000:]
        finally:
            os.killpg(run.pid, signal.SIGINT)  # Ctrl-C: run.sh stops everything it started
            try:
                run.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait(timeout=10)
    log_text = log_path.read_text(errors="replace")
    assert "stopped" in log_text, log_text[-3000:]
    # Nothing is left in the checkout root: broker state lives under var/.
    assert not (checkout / "control").exists()
    # Client mistakes and the expected 401s are not logged as errors with tracebacks.
    assert not re.search(r"Traceback", log_text), log_text[-3000:]


# --- the test command's migration check ----------------------------------------------------------------


@pytest.mark.postgresql
def test_the_migration_check_in_the_test_command_prints_only_its_verdict():
    # scripts/test.sh creates the database DATABASE_URL names before this
    # check; without it psycopg's pool warned six times and Django once.
    result = subprocess.run(
        [sys.executable, "manage.py", "makemigrations", "--check", "--dry-run"],
        cwd=REPO,
        env={**os.environ, "PYTHONWARNINGS": "default"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "No changes detected"
    assert result.stderr.strip() == ""
