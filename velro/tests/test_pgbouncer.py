"""Behind a transaction-pooling PgBouncer (DB_PGBOUNCER=true) the database timeouts still hold.

PgBouncer in transaction mode refuses the libpq `options` startup parameter
that carries statement_timeout, lock_timeout and
idle_in_transaction_session_timeout on a direct connection; told to ignore it,
it connects with none of them, and a login against a locked table hangs. With
DB_PGBOUNCER the settings send no `options`, and `manage.py db_apply_timeouts`
sets the timeouts on the server for the app's role in its database, where
every server connection PgBouncer opens picks them up.

Each test starts its own pgbouncer (pool_mode = transaction, on a free port
of 127.0.0.1) in front of this run's test database and stops it after.
Django runs in subprocesses (manage.py, python -c, a gunicorn) with
DATABASE_URL at that pgbouncer, as deployed; this process sets up and
observes. Without pgbouncer installed the tests skip, and fail under CI=true.
"""

from __future__ import annotations

import io
import json
import os
import pwd
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection
from psycopg import sql

from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from velro.db import TIMEOUT_SETTINGS, connection_timeouts, timeout_ms
from velro.tests.support import BASE_DIR, HOST, free_port, required_binary, user_exists

pytestmark = [pytest.mark.integration, pytest.mark.postgresql]

LOGIN = "/api/v1/auth/login"


# --- a private pgbouncer -----------------------------------------------------------------------


def pgbouncer_binary() -> str:
    return required_binary("pgbouncer", "the PgBouncer tests")


def direct_params() -> dict[str, object]:
    """psycopg parameters of the test database, straight to PostgreSQL (no options of ours)."""
    s = connection.settings_dict
    params = {"dbname": s["NAME"], "user": s["USER"], "password": s["PASSWORD"], "host": s["HOST"] or HOST}
    params["port"] = s["PORT"] or 5432
    return {name: value for name, value in params.items() if value}


class PgBouncer:
    """pgbouncer in transaction pooling mode on a free port, in front of the test database's server."""

    def __init__(self, directory: Path, *, pool_size: int = 10) -> None:
        self.directory = directory
        self.pool_size = pool_size
        self.port = free_port()
        self.params = direct_params()
        self.log_path = directory / "pgbouncer.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> PgBouncer:
        binary = pgbouncer_binary()
        self.directory.mkdir(parents=True, exist_ok=True)
        server = f"host={self.params['host']} port={self.params['port']}"
        if "password" in self.params:
            server += f" password={self.params['password']}"
        user = str(self.params.get("user") or pwd.getpwuid(os.getuid()).pw_name)
        (self.directory / "userlist.txt").write_text(f'"{user}" ""\n')
        ini = self.directory / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = {server}\n"
            "[pgbouncer]\n"
            f"listen_addr = {HOST}\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.directory / 'userlist.txt'}\n"
            f"admin_users = {user}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 100\n"
        )
        command = [binary, str(ini)]
        if os.geteuid() == 0:  # pgbouncer will not run as root: it reads the ini, then switches user
            command[1:1] = ["-u", "postgres" if user_exists("postgres") else "nobody"]
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                with self.connect(autocommit=True) as probe:
                    probe.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer not answering after 10 s:\n{self.log_text()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: immediate shutdown
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def database_url(self) -> str:
        auth = str(self.params.get("user", ""))
        if "password" in self.params:
            auth += f":{self.params['password']}"
        return f"postgres://{auth}@{HOST}:{self.port}/{self.params['dbname']}"

    def connect(self, **options: object) -> psycopg.Connection:
        """A plain psycopg client of this pgbouncer (no `options`)."""
        params = {**self.params, "host": HOST, "port": self.port, "connect_timeout": 5, **options}
        return psycopg.connect(**params)


@pytest.fixture
def pgbouncer(django_db_setup, tmp_path) -> Iterator[PgBouncer]:
    """A pgbouncer of this test's own in front of the test database (which django_db_setup made)."""
    bouncer = PgBouncer(tmp_path / "pgbouncer").start()
    yield bouncer
    bouncer.stop()


@pytest.fixture
def one_server_pgbouncer(django_db_setup, tmp_path) -> Iterator[PgBouncer]:
    """The same with one server connection: every client statement runs on the one it opened
    first (with more, a client may get a new one, which starts under whatever is set now)."""
    bouncer = PgBouncer(tmp_path / "pgbouncer", pool_size=1).start()
    yield bouncer
    bouncer.stop()


def reset_role_timeouts() -> None:
    """Remove the timeouts from the test role in the test database (straight to PostgreSQL)."""
    with psycopg.connect(**direct_params(), autocommit=True) as conn:
        role, database = conn.execute("SELECT current_user, current_database()").fetchone()
        for name in TIMEOUT_SETTINGS:
            conn.execute(
                sql.SQL("ALTER ROLE {} IN DATABASE {} RESET {}").format(
                    sql.Identifier(role), sql.Identifier(database), sql.Identifier(name)
                )
            )


@pytest.fixture
def clean_role(django_db_setup, django_db_blocker) -> Iterator[None]:
    """The test role starts and ends without server-side timeouts in the test database (other
    tests' plain connections to it, such as lock holders, must not inherit them)."""
    with django_db_blocker.unblock():
        reset_role_timeouts()
        yield
        reset_role_timeouts()


def drop_own_sessions() -> None:
    """Close this process's connections to the test database (Django's, and its pool's)."""
    connection.close()
    connection.close_pool()


def behind(bouncer: PgBouncer, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`python *args` from the repository with DATABASE_URL at the pgbouncer and DB_PGBOUNCER on."""
    environment = dict(os.environ)
    environment.pop("DJANGO_ENV_FILE", None)
    environment.update(
        {
            "DJANGO_SETTINGS_MODULE": "velro.settings",
            "DATABASE_URL": bouncer.database_url,
            "DB_PGBOUNCER": "true",
            "DB_POOL_MIN_SIZE": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            **env,
        }
    )
    return subprocess.run(
        [sys.executable, *args],
        cwd=BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def manage(bouncer: PgBouncer, *args: str, **env: str) -> subprocess.CompletedProcess:
    result = behind(bouncer, "manage.py", *args, **env)
    assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def shown_ms(conn: psycopg.Connection) -> dict[str, float | None]:
    return {
        name: timeout_ms(conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0])
        for name in TIMEOUT_SETTINGS
    }


# --- the finding -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_pgbouncer_in_transaction_mode_refuses_the_options_a_direct_connection_sends(pgbouncer):
    options = connection.settings_dict["OPTIONS"]["options"]  # this process: DB_PGBOUNCER off
    assert "statement_timeout" in options
    with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter: options"):
        pgbouncer.connect(options=options)


# --- db_apply_timeouts and the system check --------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_behind_pgbouncer_django_connects_and_every_server_connection_carries_the_timeouts_after_db_apply_timeouts(
    pgbouncer, clean_role
):
    expected = connection_timeouts()

    # Django connects through PgBouncer (no `options` to refuse), and its
    # database check sees the timeouts missing.
    before = manage(pgbouncer, "check", "--database", "default")
    assert "velro.W001" in before.stderr, before.stderr
    assert "db_apply_timeouts" in before.stderr

    drop_own_sessions()  # they predate the change too, and come from the same address: the command ends them
    applied = manage(pgbouncer, "db_apply_timeouts")
    assert "3 setting(s) changed" in applied.stdout, applied.stdout
    for name, value in expected.items():
        assert f"{name}: not set -> {value}ms" in applied.stdout
    assert "idle session(s) that started before the change" in applied.stdout
    assert "keep the old values" not in applied.stdout

    # Three clients, each holding a transaction: three server connections at
    # once, including any PgBouncer kept from the two commands above.
    clients = [pgbouncer.connect() for _ in range(3)]
    try:
        pids = {client.execute("SELECT pg_backend_pid()").fetchone()[0] for client in clients}
        seen = [shown_ms(client) for client in clients]
    finally:
        for client in clients:
            client.close()
    assert len(pids) == 3
    assert seen == [expected] * 3

    after = manage(pgbouncer, "check", "--database", "default")
    assert "velro.W00" not in after.stderr, after.stderr

    again = manage(pgbouncer, "db_apply_timeouts")
    assert "already in place, nothing changed" in again.stdout, again.stdout


@pytest.mark.django_db(transaction=True)
def test_the_check_tells_a_server_connection_opened_before_the_timeouts_were_set_from_timeouts_never_set(
    one_server_pgbouncer, clean_role
):
    with one_server_pgbouncer.connect(autocommit=True) as early:  # its server connection stays in the pool
        early.execute("SELECT 1")
    call_command("db_apply_timeouts", "--force", stdout=io.StringIO())  # straight to PostgreSQL: no session ended

    stale = manage(one_server_pgbouncer, "check", "--database", "default")
    assert "velro.W002" in stale.stderr, stale.stderr
    assert "RECONNECT" in stale.stderr
    assert "velro.W001" not in stale.stderr


def test_db_apply_timeouts_does_nothing_while_connections_send_the_timeouts_themselves():
    out = subprocess.run(
        [sys.executable, "manage.py", "db_apply_timeouts"],
        cwd=BASE_DIR,
        env={**os.environ, "DB_PGBOUNCER": "false", "DJANGO_SETTINGS_MODULE": "velro.settings"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "DB_PGBOUNCER is off" in out.stdout
    assert "nothing applied" in out.stdout


# --- the request path ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_behind_pgbouncer_a_login_against_a_locked_auth_users_table_answers_503_fast(
    pgbouncer, clean_role, start_gunicorn
):
    user = UserFactory()
    drop_own_sessions()  # db_apply_timeouts would end them
    manage(pgbouncer, "db_apply_timeouts")
    server = start_gunicorn(
        env={
            "DATABASE_URL": pgbouncer.database_url,
            "DB_PGBOUNCER": "true",
            "DB_BREAKER_COOLDOWN_SECONDS": "0",
        }
    )
    body = json.dumps({"email": user.email, "password": DEFAULT_PASSWORD}).encode()
    with server.connect(timeout=15) as client:
        assert client.request("POST", LOGIN, body=body).status == 200

        with psycopg.connect(**direct_params()) as holder:
            holder.execute("LOCK TABLE auth_users IN ACCESS EXCLUSIVE MODE")  # held: the transaction stays open
            started = time.monotonic()
            locked = client.request("POST", LOGIN, body=body)
            elapsed = time.monotonic() - started
            holder.rollback()
        print(f"login against a locked auth_users through PgBouncer: {locked.status} after {elapsed:.2f}s")

        assert locked.status == 503, locked.body
        assert locked.headers["content-type"].startswith("application/json")
        assert locked.json()["error"] == "unavailable"
        assert int(locked.headers["retry-after"]) >= 1
        assert elapsed < 3.0

        assert client.request("POST", LOGIN, body=body).status == 200  # lock released: served again


# --- session state transaction pooling breaks ----------------------------------------------------

ITERATE = """
import django
django.setup()
import os, psycopg
from accounts.models import User

rows = User.objects.order_by("pk").values_list("pk", flat=True).iterator(chunk_size=1)
first = next(rows)
# Other clients take every server connection PgBouncer has open, the one the
# first fetch ran on among them, and keep them (each holds a transaction).
others = [psycopg.connect(os.environ["OTHER_CLIENT"]) for _ in range(4)]
for other in others:
    other.execute("SELECT 1")
print(1 + sum(1 for _ in rows))
"""


@pytest.mark.django_db(transaction=True)
def test_behind_pgbouncer_a_queryset_iterator_survives_another_client_taking_its_server_connection(pgbouncer):
    UserFactory.create_batch(3)
    result = behind(pgbouncer, "-c", ITERATE, OTHER_CLIENT=pgbouncer.database_url)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "3"
