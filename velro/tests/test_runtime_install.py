"""`pip install -r requirements.txt` alone runs every Velro process.

A venv is built from requirements.txt and nothing else (velro/tests/runtime_venv.py,
cached under var/runtime-venv/ by the file's hash), and every process is started
with THAT venv's python: the management commands, gunicorn's config check, a real
Celery worker consuming real referral work on Redis and on RabbitMQ (PostgreSQL
and an SMTP listener show the work was done), and Celery beat scheduling the
sweeper. RabbitMQ's durability settings are checked against the real broker
(127.0.0.1:5672, guest/guest; a throwaway vhost per run, deleted afterwards).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from rest_framework.test import APIClient

from accounts.tests.factories import UserFactory
from referrals.models import Referral, ReferralCode, ReferralIntent, ReferralStatus
from referrals.tests import conftest as referral_fixtures
from referrals.tests.conftest import Worker, wait_until, worker_database_url
from velro.tests.runtime_venv import (
    REPO,
    pins_and_installed,
    runtime_venv,
    venv_environ,
)

pytestmark = pytest.mark.integration

# The referral tests' real SMTP listener and Celery worker factory (a conftest's
# fixtures are only visible below its directory; assigning them here registers them).
smtp_server = referral_fixtures.smtp_server
celery_worker = referral_fixtures.celery_worker

RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672
STRONG = "violet tractor umbrella 42"
# Nothing from the test run's own environment may reach the runtime interpreter.
ISOLATED = {"PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}
APP_COMMANDS = {"sync_users", "import_supabase_users", "sync_referrals"}
DJANGO_COMMANDS = {"migrate", "collectstatic", "check", "createsuperuser", "spectacular"}


@pytest.fixture(scope="module")
def runtime_python() -> Path:
    return runtime_venv() / "bin" / "python"


def _env(python: Path, **overrides: str) -> dict[str, str]:
    env = venv_environ(python.parent.parent)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "velro.settings",
            "DJANGO_SECRET_KEY": django_settings.SECRET_KEY,
            "DATABASE_URL": os.environ.get("DATABASE_URL", ""),
            "CELERY_BROKER_URL": django_settings.CELERY_BROKER_URL,
            "REDIS_URL": django_settings.REDIS_URL,
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "LOG_FORMAT": "plain",
        }
    )
    env.update(overrides)
    return env


def _run(python: Path, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), *args], cwd=REPO, env=_env(python, **env), capture_output=True, text=True, timeout=timeout
    )


def _signup(email: str, code: str | None = None) -> dict:
    payload = {"email": email, "password": STRONG}
    if code is not None:
        payload["referral_code"] = code
    response = APIClient().post("/api/v1/auth/signup", payload, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _credited_count(user_id: object) -> int:
    return ReferralCode.objects.get(user_id=user_id).credited_count


# --- the install itself ---------------------------------------------------------------------------


def test_requirements_txt_pins_exactly_what_its_clean_install_contains(runtime_python):
    report = pins_and_installed(runtime_python.parent.parent)
    pins, installed = report["pins"], report["installed"]
    assert not report["not_exact"], f"requirements.txt: not an exact pin (write name==version): {report['not_exact']}"
    unpinned = {name: version for name, version in installed.items() if name not in pins}
    missing = {name: version for name, version in pins.items() if name not in installed}
    drifted = {name: (pins[name], installed[name]) for name in pins.keys() & installed.keys()}
    drifted = {name: pair for name, pair in drifted.items() if pair[0] != pair[1]}
    assert not unpinned, f"installed but not pinned in requirements.txt (add them): {unpinned}"
    assert not missing, f"pinned but not installed: {missing}"
    assert not drifted, f"pinned != installed (pin, installed): {drifted}"
    assert "pytest" not in installed  # really the runtime set alone
    check = _run(runtime_python, "-m", "pip", "check")
    assert check.returncode == 0, check.stdout + check.stderr


COMMANDS_SCRIPT = r"""
import importlib, json
import django
django.setup()
from django.core.management import call_command, get_commands, load_command_class
for module in ("velro.wsgi", "velro.celery", "velro.mailcatcher", "kombu.transport.redis",
               "kombu.transport.pyamqp", "gunicorn.workers.gthread", "celery.apps.beat", "celery.apps.worker"):
    importlib.import_module(module)
failed = {}
commands = get_commands()
for name, app in sorted(commands.items()):
    try:
        load_command_class(app, name).create_parser("manage.py", name)
    except Exception as exc:
        failed[name] = repr(exc)
call_command("check", fail_level="ERROR")
print(json.dumps({"commands": sorted(commands), "failed": failed}))
"""


def test_every_management_command_and_runtime_module_imports_from_requirements_txt_alone(runtime_python):
    result = _run(runtime_python, "-c", COMMANDS_SCRIPT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}
    assert set(report["commands"]) >= APP_COMMANDS | DJANGO_COMMANDS
    help_text = _run(runtime_python, "manage.py", "help")
    assert help_text.returncode == 0, help_text.stderr[-3000:]
    assert "sync_referrals" in help_text.stdout


def test_gunicorn_from_requirements_txt_alone_passes_its_config_check(runtime_python, tmp_path):
    gunicorn = runtime_python.parent / "gunicorn"
    result = subprocess.run(
        [str(gunicorn), "--check-config", "-c", "gunicorn.conf.py", "velro.wsgi:application"],
        cwd=REPO,
        env=_env(runtime_python, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


SETTINGS_SCRIPT = r"""
import json
import django
django.setup()
from velro.celery import app
conf = app.conf
print(json.dumps({
    "options": conf.broker_transport_options,
    "queue_type": conf.task_default_queue_type,
    "exchange_type": conf.task_default_exchange_type,
    "delivery_mode": conf.task_default_delivery_mode,
    "queues": {name: queue.queue_arguments for name, queue in app.amqp.queues.items()},
}))
"""


@pytest.mark.parametrize("url", ["amqp://u:p@mq:5672/velro", "amqps://u:p@mq:5671/velro", "pyamqp://u:p@mq//"])
def test_every_rabbitmq_url_gets_confirmed_publishes_on_a_quorum_queue_and_bounded_sockets(runtime_python, url):
    result = _run(runtime_python, "-c", SETTINGS_SCRIPT, CELERY_BROKER_URL=url)
    assert result.returncode == 0, result.stderr[-3000:]
    conf = json.loads(result.stdout.strip().splitlines()[-1])
    assert conf["options"]["confirm_publish"] is True
    assert conf["options"]["connect_timeout"] <= 1 and conf["options"]["read_timeout"] <= 1
    assert conf["options"]["max_retries"] == 0
    assert "visibility_timeout" not in conf["options"]  # a Redis notion
    assert (conf["queue_type"], conf["exchange_type"]) == ("quorum", "topic")
    assert conf["delivery_mode"] in {"persistent", 2}
    assert conf["queues"] == {"celery": {"x-queue-type": "quorum"}}


def test_the_redis_broker_keeps_its_visibility_timeout_and_classic_queue(runtime_python):
    result = _run(runtime_python, "-c", SETTINGS_SCRIPT, CELERY_BROKER_URL="redis://127.0.0.1:6379/9")
    assert result.returncode == 0, result.stderr[-3000:]
    conf = json.loads(result.stdout.strip().splitlines()[-1])
    assert conf["options"]["visibility_timeout"] > 60  # redelivery after the hard time limit
    assert "confirm_publish" not in conf["options"]
    assert (conf["queue_type"], conf["exchange_type"]) == ("classic", "direct")


# --- a real worker on Redis ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_worker_from_requirements_txt_alone_consumes_a_referral_on_redis(runtime_python, smtp_server, celery_worker):
    worker = celery_worker("rt-redis", python=runtime_python, env=ISOLATED)
    referrer = UserFactory(email="rt-redis-referrer@example.com")
    friend_id = _signup("rt-redis-friend@example.com", referrer.referral_code.code)["user"]["id"]

    wait_until(lambda: _credited_count(referrer.pk) == 1, timeout=20, what="the referral credited by the worker")
    assert Referral.objects.get(referred_id=friend_id).status == ReferralStatus.CREDITED
    smtp_server.wait_for(2, timeout=20)  # the friend's welcome + "you referred" to the referrer
    assert [m["Subject"] for m in smtp_server.to("rt-redis-referrer@example.com")] == [
        "You referred rt-redis-friend to Velro"  # the display name of a signup: the email's local part
    ]
    assert worker.task_ids("referrals.process_intent", "succeeded")
    assert worker.task_ids("notifications.send_email", "succeeded")


# --- RabbitMQ ---------------------------------------------------------------------------------------


def _rabbitmqctl(*args: str, timeout: float = 60) -> str:
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl not found: install rabbitmq-server (scripts/test.sh does)")
    result = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"rabbitmqctl {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout.strip()


@pytest.fixture(scope="module")
def rabbitmq_vhost():
    """amqp:// URL of a fresh vhost on the local RabbitMQ; the vhost (queues, exchanges) is deleted after."""
    try:
        socket.create_connection((RABBITMQ_HOST, RABBITMQ_PORT), timeout=2).close()
    except OSError as exc:
        pytest.fail(f"RabbitMQ is not running on {RABBITMQ_HOST}:{RABBITMQ_PORT} ({exc}): rabbitmq-server -detached")
    vhost = f"velro_test_{os.getpid()}_{secrets.token_hex(3)}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


def _queues(url: str) -> dict[str, dict[str, str]]:
    vhost = url.rsplit("/", 1)[1]
    lines = _rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", "type", "durable", "messages")
    rows = (line.split("\t") for line in lines.splitlines() if line.strip())
    return {name: {"type": kind, "durable": durable, "messages": messages} for name, kind, durable, messages in rows}


PUBLISH_SCRIPT = r"""
import json, sys, time
import django
django.setup()
from celery import current_app
from velro.tasks import enqueue, stats
name, args, countdown = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
current_app.loader.import_default_modules()  # the tasks, as a worker or a web process has them
task = current_app.tasks[name]
started = time.perf_counter()
if countdown:
    result = task.apply_async(args=args, countdown=countdown, retry=False)
    ok, task_id = True, result.id
else:
    ok, task_id = enqueue(task, *args), None
print(json.dumps({"ok": ok, "id": task_id, "elapsed": time.perf_counter() - started, "at": time.time(),
                  "stats": dict(stats)}), flush=True)
"""


def _publish(python: Path, broker_url: str, task: str, *args: object, countdown: float = 0, timeout: float = 30):
    """Publish `task(*args)` from the runtime venv with `broker_url` (the request path's enqueue
    unless `countdown`): {"ok", "id", "elapsed", "at", "stats"}."""
    try:
        result = _run(
            python,
            "-c",
            PUBLISH_SCRIPT,
            task,
            json.dumps(list(args)),
            str(countdown),
            timeout=timeout,
            CELERY_BROKER_URL=broker_url,
            DATABASE_URL=worker_database_url(),
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"publishing {task} to {broker_url} hung for more than {timeout} s")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.django_db(transaction=True)
def test_a_worker_from_requirements_txt_alone_consumes_a_referral_on_rabbitmq_from_a_durable_quorum_queue(
    runtime_python, smtp_server, celery_worker, rabbitmq_vhost
):
    worker = celery_worker("rt-amqp", python=runtime_python, env={**ISOLATED, "CELERY_BROKER_URL": rabbitmq_vhost})
    referrer = UserFactory(email="rt-amqp-referrer@example.com")
    friend = UserFactory(email="rt-amqp-friend@example.com")
    intent = ReferralIntent.objects.create(referred=friend, code=referrer.referral_code.code)

    published = _publish(runtime_python, rabbitmq_vhost, "referrals.process_intent", intent.pk)
    assert published["ok"], published  # confirmed by RabbitMQ
    assert published["elapsed"] < 2, published

    wait_until(lambda: _credited_count(referrer.pk) == 1, timeout=20, what="the referral credited by the worker")
    assert Referral.objects.get(referred_id=friend.pk).status == ReferralStatus.CREDITED
    # The worker published send_email itself (a confirmed publish from the worker) and ran it.
    referral = Referral.objects.get(referred_id=friend.pk)
    assert [m["To"] for m in smtp_server.wait_for(1, timeout=20)] == ["rt-amqp-referrer@example.com"]
    assert smtp_server.events() == {f"referral_credited:{referral.pk}": 1}
    assert worker.task_ids("referrals.process_intent", "succeeded")
    assert worker.task_ids("notifications.send_email", "succeeded")
    assert any("Global QoS is disabled" in line for line in worker.messages())

    queue = _queues(rabbitmq_vhost)["celery"]
    assert (queue["type"], queue["durable"], queue["messages"]) == ("quorum", "true", "0")


@pytest.mark.django_db(transaction=True)
def test_a_countdown_on_rabbitmq_waits_in_the_broker_not_in_the_worker(
    runtime_python, smtp_server, celery_worker, rabbitmq_vhost
):
    # send_email retries with a countdown (backoff up to 600 s). On a quorum queue
    # a worker cannot hold such a message without blocking (no global QoS), so it
    # must wait in RabbitMQ's delayed-delivery queues and reach the worker when due.
    worker = celery_worker("rt-delay", python=runtime_python, env={**ISOLATED, "CELERY_BROKER_URL": rabbitmq_vhost})
    published = _publish(runtime_python, rabbitmq_vhost, "referrals.sweep", countdown=3)
    received = wait_until(
        lambda: published["id"] in worker.task_ids("referrals.sweep") and time.time(),
        timeout=20,
        what="the delayed sweep received",
    )
    assert received - published["at"] >= 2.5, "the worker got the message before its countdown: held, not delayed"
    wait_until(lambda: worker.result_of(published["id"]), timeout=10, what="the delayed sweep to run")
    assert _queues(rabbitmq_vhost)["celery_delayed_0"]["type"] == "quorum"


def test_publishing_to_a_rabbitmq_that_never_answers_fails_fast(runtime_python):
    with socket.socket() as hole:  # accepts TCP connections, never speaks AMQP
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        url = f"amqp://guest:guest@127.0.0.1:{hole.getsockname()[1]}//"
        published = _publish(runtime_python, url, "referrals.sweep")
    assert published["ok"] is False
    assert published["elapsed"] < 2, published
    assert published["stats"]["enqueue_failures"] == 1


def _memory_watermark() -> list[str]:
    """The `rabbitmqctl set_vm_memory_high_watermark` arguments that restore the current watermark."""
    raw = _rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().")
    if raw.startswith("{absolute,"):
        return ["absolute", raw.removeprefix("{absolute,").rstrip("}").strip()]
    float(raw)  # a fraction, e.g. 0.4; anything else: stop before raising the alarm
    return [raw]


def _memory_alarm() -> bool:
    return "memory" in _rabbitmqctl("eval", "rabbit_alarm:get_alarms().")


def test_publishing_while_rabbitmq_blocks_publishers_fails_fast_and_is_not_reported_as_sent(
    runtime_python, rabbitmq_vhost
):
    # A memory alarm: RabbitMQ keeps the connection open but stops reading from
    # publishers. Without publisher confirms the publish "succeeds" into a socket
    # buffer; without socket timeouts the confirm is awaited forever.
    restore = _memory_watermark()
    _rabbitmqctl("set_vm_memory_high_watermark", "0")
    try:
        wait_until(_memory_alarm, timeout=30, interval=0.5, what="RabbitMQ's memory alarm")
        published = _publish(runtime_python, rabbitmq_vhost, "referrals.sweep", timeout=30)
    finally:
        _rabbitmqctl("set_vm_memory_high_watermark", *restore)
        wait_until(lambda: not _memory_alarm(), timeout=60, interval=0.5, what="the memory alarm to clear")
    assert published["ok"] is False, "a publish RabbitMQ never accepted was reported as sent"
    assert published["elapsed"] < 5, published
    assert published["stats"]["enqueue_failures"] == 1


# --- beat ------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_beat_from_requirements_txt_alone_schedules_the_sweep_that_a_worker_runs(
    runtime_python, smtp_server, celery_worker, tmp_path
):
    referrer = UserFactory(email="rt-beat-referrer@example.com")
    friend = UserFactory(email="rt-beat-friend@example.com")
    ReferralIntent.objects.create(referred=friend, code=referrer.referral_code.code)  # never enqueued
    celery_worker("rt-beat-worker", python=runtime_python, env={**ISOLATED, "REFERRAL_SWEEP_MIN_AGE_SECONDS": "0"})

    schedule = tmp_path / "celerybeat-schedule"
    log_path = tmp_path / "beat.log"
    command = [str(runtime_python), "-m", "celery", "-A", "velro", "beat", "-l", "INFO", "--schedule", str(schedule)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=_env(runtime_python, DATABASE_URL=worker_database_url(), REFERRAL_SWEEP_INTERVAL_SECONDS="1"),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    beat = Worker("beat", process, log_path)
    try:
        wait_until(lambda: _credited_count(referrer.pk) == 1, timeout=30, what="the sweep sent by beat to run")
        assert beat.alive, beat.log_tail()
        assert "Sending due task referrals-sweep (referrals.sweep)" in beat.log()
        assert "Traceback" not in beat.log()
    finally:
        beat.stop()
        print(f"\n----- beat log tail -----\n{beat.log_tail()}")
    assert Referral.objects.get(referred_id=friend.pk).status == ReferralStatus.CREDITED
    assert list(schedule.parent.glob("celerybeat-schedule*"))
