"""The Docker image, replayed without Docker (there is no engine here).

The Dockerfile is parsed and its steps are run in order, so a regression in the
Dockerfile fails here: FROM's Python must be this Python; ENV/ARG/WORKDIR are
applied; `COPY requirements.txt .` + `RUN pip install ...` is the same pip
command into a clean venv (the runtime venv shared with test_runtime_install.py,
velro/tests/runtime_venv.py); `COPY . .` copies the build context as
.dockerignore leaves it (into a directory standing for the image's /); every
other RUN runs as written, as root, in WORKDIR (the user is created as the
Dockerfile says, if the host does not have it yet); USER is the user everything
then runs as (setpriv). docker-compose.yml's web, worker and beat commands and
the web healthcheck then run as that user with the compose environment, the
service hosts pointed at this machine: PostgreSQL 127.0.0.1:5432 (a throwaway
database), a private redis-server on a free port (compose's `redis`), nothing
for mail. GIT_COMMIT is passed as a build arg, as docker-compose.yml does, and
/__version must report it.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml

from referrals.tests.conftest import Worker, wait_until
from velro.tests.runtime_venv import REPO, runtime_venv
from velro.tests.support import user_exists

pytestmark = pytest.mark.integration

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker-compose.yml"
APP_SERVICES = ("web", "worker", "beat")
COMMIT = f"replay-{secrets.token_hex(6)}"
BUILD_TIME = "2026-01-02T03:04:05Z"
# The PATH of the python image, with the replayed install (the image's /usr/local) first.
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PG = "postgres://root@127.0.0.1:5432"


# --- .dockerignore ------------------------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore matching (Go filepath.Match, plus `**` for any number of directories)."""
    out, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
            continue
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body[:1] in "!^" else body).replace("\\", "\\\\") + "]"
            i = end
        elif char == "\\" and i + 1 < len(pattern):
            out, i = out + re.escape(pattern[i + 1]), i + 1
        else:
            out += re.escape(char)
        i += 1
    return re.compile(f"^{out}$")


class DockerIgnore:
    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, str, re.Pattern[str]]] = []  # (exception, pattern, regex)
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exception = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            self.rules.append((exception, pattern, _glob_regex(pattern)))

    def excluded(self, relpath: str) -> bool:
        """The last rule matching the path or one of its parent directories decides."""
        parts = relpath.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for exception, _, regex in self.rules:
            if any(regex.match(candidate) for candidate in candidates):
                result = not exception
        return result

    def may_reinclude_under(self, relpath: str) -> bool:
        return any(exc and ("*" in pat or pat.startswith(relpath + "/")) for exc, pat, _ in self.rules)


def copy_context(source: Path, dest: Path, ignore: DockerIgnore) -> list[str]:
    """`COPY . <dest>`: the build context without what .dockerignore excludes; the paths copied."""
    copied = []
    for directory, dirnames, filenames in os.walk(source):
        rel_dir = Path(directory).relative_to(source)
        for name in list(dirnames):
            rel = (rel_dir / name).as_posix()
            if ignore.excluded(rel) and not ignore.may_reinclude_under(rel):
                dirnames.remove(name)
                continue
            target = dest / rel
            if (Path(directory) / name).is_symlink():
                dirnames.remove(name)
                if not ignore.excluded(rel):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.symlink_to(os.readlink(Path(directory) / name))
                    copied.append(rel)
                continue
            if not ignore.excluded(rel):
                target.mkdir(parents=True, exist_ok=True)
                shutil.copystat(Path(directory) / name, target)
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            if ignore.excluded(rel):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(directory) / name, target, follow_symlinks=False)
            copied.append(rel)
    return copied


def test_dockerignore_matching_follows_dockers_rules():
    ignore = DockerIgnore("var/\n**/__pycache__/\n*.sqlite3\n.env\n.env.*\n!.env.example\n")
    assert ignore.excluded("var") and ignore.excluded("var/prometheus/x.db")
    assert ignore.excluded("accounts/tests/__pycache__/x.pyc") and ignore.excluded("__pycache__")
    assert ignore.excluded("db.sqlite3") and not ignore.excluded("var2/db.sqlite3")  # root only, as Docker
    assert ignore.excluded(".env") and ignore.excluded(".env.local") and not ignore.excluded(".env.example")
    assert not ignore.excluded("velro/settings.py")


# --- Dockerfile ------------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with line continuations joined; comments and parser directives dropped."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#") or (pending and not stripped):
            continue
        if not stripped:
            continue
        start = start or number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        pending, start = "", 0
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


_VAR = re.compile(r"\$(?:\{(\w+)(?::?([-+])([^}]*))?\}|(\w+))")


def expand(text: str, variables: dict[str, str]) -> str:
    """Dockerfile (and Compose-style) $VAR / ${VAR} / ${VAR:-default} / ${VAR:+alternative} substitution."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(4)
        value = variables.get(name, "")
        if match.group(2) == "-":
            return value or match.group(3)
        if match.group(2) == "+":
            return match.group(3) if value else ""
        return value

    return _VAR.sub(one, text)


@dataclass
class Image:
    root: Path  # stands for the image's /
    workdir: PurePosixPath = field(default_factory=lambda: PurePosixPath("/"))
    env: dict[str, str] = field(default_factory=dict)  # ENV: what the containers get
    args: dict[str, str] = field(default_factory=dict)  # ARG values in scope
    user: str = "root"
    cmd: list[str] = field(default_factory=list)
    expose: list[str] = field(default_factory=list)
    venv: Path | None = None
    from_python: str = ""
    steps: list[str] = field(default_factory=list)

    def path(self, image_path: str | PurePosixPath) -> Path:
        """Where an image path lives in the replay (relative paths: from WORKDIR)."""
        absolute = self.workdir / PurePosixPath(image_path)
        return self.root / absolute.relative_to("/")

    def run_env(self) -> dict[str, str]:
        """A RUN step's environment: ENV, the ARGs in scope, the image's PATH, a HOME for root."""
        assert self.venv is not None
        home = self.root / "root"
        home.mkdir(exist_ok=True)
        return {**self.args, **self.env, "PATH": f"{self.venv / 'bin'}:{IMAGE_PATH}", "HOME": str(home)}

    def container_env(self, extra: dict[str, str]) -> dict[str, str]:
        """A container's environment: ENV, then the service's environment, PATH, HOME of USER."""
        assert self.venv is not None
        return {
            "LANG": "C.UTF-8",
            **self.env,
            **extra,
            "PATH": f"{self.venv / 'bin'}:{IMAGE_PATH}",
            "HOME": str(self.path(pwd.getpwnam(self.user).pw_dir)),
            "PYTHONNOUSERSITE": "1",
        }

    def as_user(self, command: list[str]) -> list[str]:
        account = pwd.getpwnam(self.user)
        group = grp.getgrgid(account.pw_gid).gr_name
        return ["setpriv", f"--reuid={self.user}", f"--regid={group}", "--init-groups", "--", *command]


def _created_user(command: str) -> str | None:
    """The account a `... && useradd [options] NAME` RUN step creates, if it is one."""
    for part in re.split(r"&&|;", command):
        words = shlex.split(part)
        if words and words[0] == "useradd":
            return words[-1]
    return None


def replay(dockerfile: Path, context: Path, root: Path, build_args: dict[str, str]) -> Image:
    image = Image(root=root)
    ignore = DockerIgnore(DOCKERIGNORE.read_text() if DOCKERIGNORE.exists() else "")
    seen_args: set[str] = set()
    for step in parse_dockerfile(dockerfile.read_text()):
        where = f"Dockerfile:{step.line} {step.keyword} {step.args}"
        image.steps.append(where)
        variables = {**image.args, **image.env}
        if step.keyword == "FROM":
            match = re.fullmatch(r"python:(\d+\.\d+)[\w.-]*", step.args.split()[0])
            assert match, f"{where}: the replay knows python:X.Y images only"
            image.from_python = match.group(1)
            assert image.from_python == f"{sys.version_info.major}.{sys.version_info.minor}", (
                f"{where}: the image's Python is {image.from_python}, this replay runs {sys.version_info[:2]}"
            )
        elif step.keyword == "ENV":
            words = shlex.split(step.args)
            pairs = (
                [word.partition("=") for word in words] if "=" in words[0] else [(words[0], "=", " ".join(words[1:]))]
            )
            for name, _, value in pairs:
                image.env[name] = expand(value, variables)
        elif step.keyword == "ARG":
            name, has_default, default = step.args.partition("=")
            seen_args.add(name)
            image.args[name] = build_args.get(name, expand(default, variables) if has_default else "")
        elif step.keyword == "WORKDIR":
            image.workdir = image.workdir / expand(step.args, variables)
            image.path(".").mkdir(parents=True, exist_ok=True)
        elif step.keyword == "COPY":
            words = shlex.split(expand(step.args, variables))
            assert not [w for w in words if w.startswith("--")], f"{where}: COPY flags are not replayed"
            *sources, dest = words
            for source in sources:
                if source == ".":
                    copy_context(context, image.path(dest), ignore)
                else:
                    assert not ignore.excluded(source), f"{where}: {source} is excluded by .dockerignore"
                    target = image.path(dest)
                    target = target / Path(source).name if dest.endswith("/") or dest == "." else target
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(context / source, target)
        elif step.keyword == "RUN":
            command = step.args
            words = shlex.split(command)
            if words[:2] == ["pip", "install"]:
                assert not re.search(r"&&|;|\|", command), f"{where}: the pip step must be a pip command alone"
                image.venv = runtime_venv(tuple(words[1:]), requirements=image.path("requirements.txt"))
                continue
            if (account := _created_user(command)) and user_exists(account):
                continue  # created by an earlier replay on this host
            if not account:
                assert str(image.workdir) == "/" or str(image.workdir) not in command, (
                    f"{where}: use paths relative to WORKDIR (the replay runs the step as written)"
                )
            assert image.venv is not None or account, f"{where}: runs before the pip install"
            env = image.run_env() if image.venv else {**image.env, "PATH": IMAGE_PATH}
            result = subprocess.run(
                ["/bin/sh", "-c", command],
                cwd=image.path("."),
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert result.returncode == 0, f"{where} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        elif step.keyword == "USER":
            image.user = expand(step.args, variables).split(":")[0]
        elif step.keyword == "EXPOSE":
            image.expose += step.args.split()
        elif step.keyword == "CMD":
            image.cmd = json.loads(step.args)
        elif step.keyword != "LABEL":
            raise AssertionError(f"{where}: instruction not replayed by velro/tests/test_image.py")
    unknown = set(build_args) - seen_args
    assert not unknown, f"build args the Dockerfile does not declare (ARG): {unknown}"
    assert image.venv is not None, "the Dockerfile never runs `pip install`"
    return image


# --- docker-compose.yml ----------------------------------------------------------------------------------


def compose(variables: dict[str, str]) -> dict:
    """docker-compose.yml, interpolated like `docker compose` does (${VAR:-default}, ${VAR:?error})."""

    def walk(node: object) -> object:
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        if isinstance(node, str):
            for name in re.findall(r"\$\{(\w+):?\?[^}]*\}", node):
                assert variables.get(name), f"docker-compose.yml requires {name}"
            return expand(re.sub(r"\$\{(\w+):?\?[^}]*\}", r"${\1}", node), variables).replace("$$", "$")
        return node

    return walk(yaml.safe_load(COMPOSE.read_text()))


def service_env(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    return {key: str(value) for key, value in environment.items()}


# --- the replayed image and its stack ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Stack:
    image: Image
    services: dict
    env: dict[str, str]  # the compose app environment, pointed at this machine
    port: int
    logs: Path
    processes: list[Worker] = field(default_factory=list)

    def command(self, service: str) -> list[str]:
        command = self.services[service]["command"]
        return shlex.split(command) if isinstance(command, str) else list(command)

    def start(self, name: str, command: list[str], extra_env: dict[str, str] | None = None) -> Worker:
        log_path = self.logs / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                self.image.as_user(command),
                cwd=self.image.path("."),
                env=self.image.container_env({**self.env, **(extra_env or {})}),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(name, process, log_path)
        self.processes.append(worker)
        return worker

    def run(self, command: list[str], timeout: float = 120, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.image.as_user(command),
            cwd=self.image.path("."),
            env=self.image.container_env({**self.env, **extra_env}),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _owner(path: Path) -> str:
    return pwd.getpwuid(path.stat().st_uid).pw_name


@pytest.fixture(scope="module")
def image() -> Image:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("replaying the image's user model needs root and setpriv (CI runs as root)")
    root = Path(tempfile.mkdtemp(prefix="velro-image-"))
    root.chmod(0o755)  # the image's user must reach WORKDIR, as in a container
    try:
        built = replay(DOCKERFILE, REPO, root, {"GIT_COMMIT": COMMIT, "BUILD_TIME": BUILD_TIME})
        python = built.venv / "bin" / "python"
        assert os.access(python.resolve(), os.X_OK), python
        yield built
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(image, tmp_path_factory):
    """The compose app environment on this machine: a throwaway database, a private Redis."""
    services = compose({"DJANGO_SECRET_KEY": secrets.token_urlsafe(50), "GIT_COMMIT": COMMIT, "BUILD_TIME": BUILD_TIME})
    app_env = service_env(services["services"]["web"])
    database = f"velro_test_image_{os.getpid()}"
    redis_port, web_port = _free_port(), _free_port()
    redis_server = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    local = {
        "DATABASE_URL": f"{PG}/{database}",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/1",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(_free_port()),  # nothing listens: no mail is sent here
        "BIND": f"127.0.0.1:{web_port}",
    }
    missing = set(local) - set(app_env)
    assert not missing, f"docker-compose.yml's web environment lacks {missing}"
    result = Stack(
        image=image,
        services=services["services"],
        env={**app_env, **local, "WEB_CONCURRENCY": "2"},  # 2 workers: light on a 2-core CI box
        port=web_port,
        logs=tmp_path_factory.mktemp("image-logs"),
    )
    try:
        yield result
    finally:
        for process in result.processes:
            process.terminate()
        for process in result.processes:
            process.stop()
            print(f"\n----- {process.name} log tail ({process.log_path}) -----\n{process.log_tail()}")
        redis_server.terminate()
        redis_server.wait(timeout=10)
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture(scope="module")
def web(stack) -> Worker:
    """docker-compose.yml's web command (migrate, then gunicorn) as the image's user, until /health answers."""
    server = stack.start("web", stack.command("web"))

    def healthy() -> bool:
        assert server.alive, f"web exited ({server.process.returncode}):\n{server.log_tail()}"
        try:
            return _get(stack.port, "/health")[0] == 200
        except OSError:
            return False

    wait_until(healthy, timeout=90, interval=0.2, what="the replayed web service to answer /health")
    return server


# --- the tests ---------------------------------------------------------------------------------------------


def test_the_image_runs_as_a_non_root_user_who_owns_var_and_not_the_code(image):
    assert image.user not in {"root", "0"}, "the Dockerfile must switch to a non-root USER"
    account = pwd.getpwnam(image.user)
    assert account.pw_uid != 0
    app = image.path(".")
    assert _owner(app / "velro" / "settings.py") == "root"
    assert _owner(app / "var") == image.user, "var/ (metrics, beat schedule) must belong to the runtime user"
    assert _owner(app / "var" / "prometheus") == image.user
    assert (app / "staticfiles" / "admin").is_dir(), "collectstatic did not run at build time"
    assert not (app / ".git").exists() and not (app / ".venv").exists() and not (app / "var" / "runtime-venv").exists()
    assert image.env["GIT_COMMIT"] == COMMIT and image.env["BUILD_TIME"] == BUILD_TIME
    assert image.cmd[:3] == ["gunicorn", "-c", "gunicorn.conf.py"]


def test_the_images_user_can_write_var_but_not_the_code(image, stack):
    result = stack.run(
        ["sh", "-c", "test -w var && test -w var/prometheus && ! test -w . && ! test -w velro/settings.py"]
    )
    assert result.returncode == 0, "the runtime user must write var/ and nothing else of /app"


def test_the_image_passes_gunicorns_config_check_as_its_user(image, stack):
    result = stack.run([*image.cmd, "--check-config"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def test_gunicorn_says_which_metrics_directory_its_user_cannot_write(image, stack):
    locked = image.path("locked-metrics")  # root-owned, like var/ was in the image
    locked.mkdir(mode=0o755)
    result = stack.run([*image.cmd, "--check-config"], PROMETHEUS_MULTIPROC_DIR=str(locked / "web"))
    assert result.returncode != 0
    assert f"Prometheus metrics directory {locked / 'web'} is not usable" in result.stderr, result.stderr[-2000:]
    assert "PROMETHEUS_MULTIPROC_DIR" in result.stderr


def test_the_compose_web_command_serves_health_version_and_metrics_from_the_image(image, stack, web):
    status, body = _get(stack.port, "/__version")
    assert status == 200, body
    version = json.loads(body)
    assert version["commit"] == COMMIT
    assert version.get("build_time", BUILD_TIME) == BUILD_TIME  # shown to trusted callers (127.0.0.1 is)

    status, body = _get(stack.port, "/metrics")
    assert status == 200, body
    assert b"velro_http_requests_total" in body
    metrics_dir = Path(stack.image.path("var/prometheus")) / stack.env["BIND"].replace(":", "_")
    assert list(metrics_dir.glob("*.db")), "gunicorn's workers wrote no multiprocess metrics files"

    # The compose healthcheck itself, inside the "container" (its URL pointed at this web's port).
    test = stack.services["web"]["healthcheck"]["test"]
    assert test[0] == "CMD", test
    command = [part.replace("localhost:8000", f"127.0.0.1:{stack.port}") for part in test[1:]]
    assert any(f"127.0.0.1:{stack.port}/health" in part for part in command), command
    result = stack.run(command, timeout=30)
    assert result.returncode == 0, result.stderr
    assert web.alive


def test_the_compose_worker_command_consumes_a_task_in_the_image(image, stack, web):
    worker = stack.start("worker", stack.command("worker"))
    worker.wait_ready(timeout=60)
    publish = (
        "import velro.celery, django; django.setup(); from referrals.tasks import sweep;"
        " print(sweep.apply_async(retry=False).id)"
    )
    result = stack.run(["python", "-c", publish], timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    task_id = result.stdout.strip().splitlines()[-1]
    wait_until(lambda: worker.result_of(task_id), timeout=30, what="the worker to run the sweep")
    assert "Traceback" not in worker.log(), worker.log_tail()
    worker.stop()


def test_the_compose_beat_command_writes_its_schedule_in_the_image(image, stack, web):
    command = stack.command("beat")
    schedule = command[command.index("--schedule") + 1]
    beat = stack.start("beat", command)
    schedule_path = image.path(schedule)
    wait_until(
        lambda: list(schedule_path.parent.glob(schedule_path.name + "*")) or not beat.alive,
        timeout=30,
        what="beat to write its schedule",
    )
    assert beat.alive, beat.log_tail()
    time.sleep(1)  # a start that fails after opening the schedule would show now
    assert beat.alive and "Traceback" not in beat.log(), beat.log_tail()
    assert all(_owner(path) == image.user for path in schedule_path.parent.glob(schedule_path.name + "*"))
    beat.stop()


def test_docker_compose_builds_and_runs_what_the_replay_checked(image, stack):
    services = stack.services
    for name in APP_SERVICES:
        service = services[name]
        build = service["build"]
        assert build["context"] == ".", name
        assert set(build["args"]) == {"GIT_COMMIT", "BUILD_TIME"}, name
        assert build["args"]["GIT_COMMIT"] == COMMIT, f"{name}: GIT_COMMIT is not passed through to the build"
        assert service["image"] == services["web"]["image"], name
        assert (
            service_env(service).items()
            >= {k: v for k, v in service_env(services["web"]).items() if k != "BIND"}.items()
        )
        for volume in service.get("volumes", []):
            target = volume.split(":")[1]
            assert _owner(image.path(target)) == image.user, f"{name}: {target} is mounted but not the user's"
    assert stack.command("web")[-1].endswith("gunicorn -c gunicorn.conf.py velro.wsgi:application")
    assert stack.command("worker")[:4] == ["celery", "-A", "velro", "worker"]
    assert stack.command("beat")[:4] == ["celery", "-A", "velro", "beat"]

    # The service hosts in the app's URLs exist, with the credentials the postgres service sets.
    env = service_env(services["web"])
    database = urlsplit(env["DATABASE_URL"])
    postgres = service_env(services["postgres"])
    assert database.hostname in services
    assert (database.username, database.password, database.path.strip("/")) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )
    assert urlsplit(env["REDIS_URL"]).hostname in services
    assert urlsplit(env["CELERY_BROKER_URL"]).hostname in services
    assert env["EMAIL_HOST"] in services
    # The published port is the one gunicorn binds and the image exposes; nginx publishes it
    # (web is reached through it: velro/tests/test_nginx.py checks the proxy's side).
    bind_port = env["BIND"].rsplit(":", 1)[1]
    assert "ports" not in services["web"]
    assert services["nginx"]["ports"] == [f"{bind_port}:{bind_port}"]
    assert f"{bind_port}" in {port.split("/")[0] for port in image.expose}
