"""Strict settings parsing, checked in a fresh interpreter per environment.

Settings are read once per process, so each case starts
`python -c "import django; django.setup(); ..."` from the repository root
with a controlled environment: the test run's own variables that the
settings read are removed, a known-good baseline is set, then the case's
overrides are applied (None = unset).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETTINGS_PY = REPO / "velro" / "settings.py"
ENV_EXAMPLE = REPO / ".env.example"

# _str("NAME", ...), _bool("NAME", ...), _int(...), _float(...), _list(...),
# _url(...) and any other module-level helper of that shape (_rate, ...).
HELPER_READ = re.compile(r"(?<![\w.])_[a-z][a-z_]*\(\s*[\"']([A-Z][A-Z0-9_]*)[\"']")
# Direct reads: os.environ.get("NAME"), os.environ["NAME"], os.getenv("NAME").
DIRECT_READ = re.compile(r"os\.(?:environ\.get\(|environ\[|getenv\()\s*[\"']([A-Z][A-Z0-9_]*)[\"']")

REQUIRED_IN_EXAMPLE = [
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "DJANGO_SECRET_KEY",
    "DJANGO_DEBUG",
    "DJANGO_ALLOWED_HOSTS",
    "EMAIL_HOST",
    "EMAIL_PORT",
    "DEFAULT_FROM_EMAIL",
]

SECRET = "s3cr3t-" + "x" * 43  # 50 characters
BASELINE = {
    "DJANGO_SECRET_KEY": SECRET,
    "DATABASE_URL": "postgres://velro@127.0.0.1:5432/velro_settings_check",
    "REDIS_URL": "redis://127.0.0.1:6379/13",
}


def _settings_names() -> set[str]:
    source = SETTINGS_PY.read_text()
    return set(HELPER_READ.findall(source)) | set(DIRECT_READ.findall(source))


def _environment(overrides: dict[str, str | None]) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in _settings_names()}
    env.pop("DJANGO_ENV_FILE", None)
    env["DJANGO_SETTINGS_MODULE"] = "velro.settings"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(BASELINE)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _start(expression: str = "settings.DEBUG", **overrides: str | None) -> subprocess.CompletedProcess:
    code = f"import django; django.setup(); from django.conf import settings; print({expression})"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=_environment(overrides),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _started(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def _refused(result: subprocess.CompletedProcess, name: str) -> str:
    """The process stopped with ImproperlyConfigured, and its message names `name`.

    Only the exception line is searched: the traceback's source lines name
    every variable anyway.
    """
    assert result.returncode != 0, f"started although it should not have: {result.stdout!r}"
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    message = lines[-1] if lines else ""
    assert message.startswith("django.core.exceptions.ImproperlyConfigured:"), result.stderr
    assert name in message, message
    return message


# --- the harness itself ----------------------------------------------------------------


def test_the_baseline_environment_starts_with_debug_off():
    assert _started(_start()) == "False"


def test_the_environment_of_the_test_run_does_not_leak_into_a_case():
    env = _environment({"DJANGO_DEBUG": None})
    assert "DJANGO_DEBUG" not in env
    assert env["DJANGO_SECRET_KEY"] == SECRET
    assert "DJANGO_ENV_FILE" not in env


# --- DJANGO_DEBUG ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["maybe", "tru", "2", "yes please"])
def test_a_debug_value_that_is_not_a_boolean_stops_the_start(value):
    _refused(_start(DJANGO_DEBUG=value), "DJANGO_DEBUG")


@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_debug_is_off_when_not_given(value):
    assert _started(_start(DJANGO_DEBUG=value)) == "False"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("TRUE", "True"),
        ("1", "True"),
        (" on ", "True"),
        ("false", "False"),
        ("0", "False"),
        ("No", "False"),
    ],
)
def test_debug_accepts_the_listed_spellings(value, expected):
    assert _started(_start(DJANGO_DEBUG=value)) == expected


# --- DJANGO_SECRET_KEY ------------------------------------------------------------------------


@pytest.mark.parametrize("debug", [None, "false"], ids=["debug-unset", "debug-false"])
def test_a_missing_secret_key_outside_debug_stops_the_start(debug):
    _refused(_start(DJANGO_SECRET_KEY=None, DJANGO_DEBUG=debug), "DJANGO_SECRET_KEY")


@pytest.mark.parametrize("secret", ["", "   ", "short", "x" * 31], ids=["empty", "blank", "short", "31-chars"])
def test_a_too_short_secret_key_outside_debug_stops_the_start(secret):
    _refused(_start(DJANGO_SECRET_KEY=secret), "DJANGO_SECRET_KEY")


def test_a_32_character_secret_key_is_enough():
    assert _started(_start("settings.SECRET_KEY", DJANGO_SECRET_KEY="k" * 32)) == "k" * 32


# --- DATABASE_URL --------------------------------------------------------------------------------


def test_a_missing_database_url_outside_debug_stops_the_start():
    _refused(_start(DATABASE_URL=None), "DATABASE_URL")


@pytest.mark.parametrize(
    "url",
    [
        "mysql://velro:pw@127.0.0.1:3306/velro",
        "oracle://velro:pw@127.0.0.1/velro",
        "postgress://velro@127.0.0.1:5432/velro",
        "http://127.0.0.1/",
        "not a url",
        "",
    ],
    ids=["mysql", "oracle", "scheme-typo", "http", "garbage", "empty"],
)
def test_a_database_url_that_is_not_postgres_or_sqlite_stops_the_start(url):
    _refused(_start(DATABASE_URL=url), "DATABASE_URL")


def test_a_postgres_database_url_is_parsed_with_timeouts():
    result = _start(
        "settings.DATABASES['default']['ENGINE'], settings.DATABASES['default']['NAME'],"
        " settings.DATABASES['default']['OPTIONS']['options']",
        DB_STATEMENT_TIMEOUT_MS="1234",
    )
    output = _started(result)
    assert "velro.pgbackend" in output
    assert "velro_settings_check" in output
    assert "statement_timeout=1234" in output


# --- numbers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "1.5", "5s", "0", "-5"])
def test_a_malformed_statement_timeout_stops_the_start(value):
    _refused(_start(DB_STATEMENT_TIMEOUT_MS=value), "DB_STATEMENT_TIMEOUT_MS")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DB_LOCK_TIMEOUT_MS", "soon"),
        ("EMAIL_PORT", "smtp"),
        ("ACCESS_TOKEN_TTL_SECONDS", "10"),  # below its minimum
        ("REDIS_SOCKET_TIMEOUT", "fast"),
    ],
)
def test_other_malformed_numbers_stop_the_start_naming_the_variable(name, value):
    _refused(_start(**{name: value}), name)


# --- Redis, cache and Celery -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://x", "https://redis.example.com:6379", "127.0.0.1:6379", "memcached://x"], ids=str
)
def test_a_redis_url_with_a_wrong_scheme_stops_the_start(url):
    _refused(_start(REDIS_URL=url, CELERY_BROKER_URL="redis://127.0.0.1:6379/11"), "REDIS_URL")


def test_the_celery_broker_defaults_to_the_redis_url():
    result = _start("settings.CELERY_BROKER_URL", REDIS_URL="redis://127.0.0.1:6379/5", CELERY_BROKER_URL=None)
    assert _started(result) == "redis://127.0.0.1:6379/5"


def test_an_explicit_celery_broker_wins_over_the_redis_url():
    result = _start(
        "settings.CELERY_BROKER_URL", REDIS_URL="redis://127.0.0.1:6379/5", CELERY_BROKER_URL="redis://10.0.0.9:6379/2"
    )
    assert _started(result) == "redis://10.0.0.9:6379/2"


def test_a_celery_broker_with_a_wrong_scheme_stops_the_start():
    _refused(_start(CELERY_BROKER_URL="http://broker.example.com"), "CELERY_BROKER_URL")


def test_without_a_redis_url_the_cache_is_local_memory():
    result = _start(
        "settings.CACHES['default']['BACKEND']", REDIS_URL="", CELERY_BROKER_URL="redis://127.0.0.1:6379/11"
    )
    assert _started(result) == "django.core.cache.backends.locmem.LocMemCache"


def test_with_a_redis_url_the_cache_is_django_redis():
    result = _start(
        "settings.CACHES['default']['BACKEND'], settings.CACHES['default']['LOCATION']",
        REDIS_URL="redis://127.0.0.1:6379/7",
    )
    output = _started(result)
    assert "django_redis.cache.RedisCache" in output
    assert "redis://127.0.0.1:6379/7" in output


# --- JWT_SECRET ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", ["j" * 31, "é" * 15, "short"], ids=["31-bytes", "15-two-byte-chars", "short"])
def test_a_jwt_secret_shorter_than_32_bytes_stops_the_start(secret):
    _refused(_start(JWT_SECRET=secret), "JWT_SECRET")


@pytest.mark.parametrize("secret", ["j" * 32, "é" * 16], ids=["32-ascii", "16-two-byte-chars"])
def test_a_jwt_secret_of_32_bytes_is_enough(secret):
    assert _started(_start("len(settings.JWT_SECRET.encode())", JWT_SECRET=secret)) == "32"


def test_no_jwt_secret_is_allowed():
    assert _started(_start("repr(settings.JWT_SECRET)", JWT_SECRET=None)) == "''"


# --- DEBUG development defaults --------------------------------------------------------------------------------


def test_debug_starts_without_a_secret_key_or_database_url_on_sqlite():
    result = _start(
        "settings.DEBUG, settings.DATABASES['default']['ENGINE'], bool(settings.SECRET_KEY)",
        DJANGO_DEBUG="true",
        DJANGO_SECRET_KEY=None,
        DATABASE_URL=None,
    )
    assert _started(result) == "True django.db.backends.sqlite3 True"


# --- .env.example --------------------------------------------------------------------------------------------------


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![A-Z0-9_]){re.escape(name)}(?![A-Z0-9_])", text) is not None


def test_env_example_exists_at_the_repository_root():
    assert ENV_EXAMPLE.is_file()


@pytest.mark.parametrize("name", REQUIRED_IN_EXAMPLE)
def test_env_example_mentions_the_core_variables(name):
    assert ENV_EXAMPLE.is_file()
    assert _mentions(ENV_EXAMPLE.read_text(), name), f"{name} is not in .env.example"


def test_the_settings_parser_finds_the_variables_it_should():
    # Guards the regex below: an empty or partial match would make the next
    # test pass for nothing.
    names = _settings_names()
    assert {"DJANGO_DEBUG", "DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "JWT_SECRET", "EMAIL_PORT"} <= names
    assert len(names) >= 30, sorted(names)


def test_env_example_mentions_every_variable_the_settings_read():
    assert ENV_EXAMPLE.is_file()
    text = ENV_EXAMPLE.read_text()
    missing = sorted(name for name in _settings_names() if not _mentions(text, name))
    assert missing == [], f"read in velro/settings.py but not in .env.example: {missing}"


# --- GoTrue issuer --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bind", "issuer"),
    [
        ("127.0.0.1:9000", "http://127.0.0.1:9000/auth/v1"),
        ("0.0.0.0:8123", "http://localhost:8123/auth/v1"),
    ],
)
def test_the_gotrue_issuer_follows_bind_when_no_site_url_is_given(bind, issuer):
    result = _start("settings.GOTRUE_ISSUER", BIND=bind, GOTRUE_SITE_URL=None, GOTRUE_ISSUER=None)
    assert _started(result) == issuer


def test_the_gotrue_issuer_follows_the_site_url_and_an_explicit_issuer_wins():
    site = _start("settings.GOTRUE_ISSUER", BIND="0.0.0.0:8000", GOTRUE_SITE_URL="https://auth.example.com/")
    assert _started(site) == "https://auth.example.com/auth/v1"
    explicit = _start("settings.GOTRUE_ISSUER", GOTRUE_SITE_URL="https://a.example", GOTRUE_ISSUER="https://b/auth/v1")
    assert _started(explicit) == "https://b/auth/v1"


def test_gotrue_cors_origins_configure_django_cors_headers():
    expression = "(settings.CORS_ALLOW_ALL_ORIGINS, settings.CORS_ALLOWED_ORIGINS, settings.CORS_URLS_REGEX)"
    assert _started(_start(expression, GOTRUE_CORS_ALLOWED_ORIGINS=None)) == "(True, [], '^/auth/v1/')"
    listed = _start(expression, GOTRUE_CORS_ALLOWED_ORIGINS="https://a.example, https://b.example:8443")
    assert _started(listed) == "(False, ['https://a.example', 'https://b.example:8443'], '^/auth/v1/')"
    assert _started(_start(expression, GOTRUE_CORS_ALLOWED_ORIGINS="")) == "(False, [], '^/auth/v1/')"


# --- the file-system broker -------------------------------------------------------------------------------------------


def test_the_file_system_broker_keeps_its_control_folder_under_var():
    result = _start(
        "settings.CELERY_BROKER_TRANSPORT_OPTIONS['control_folder']", CELERY_BROKER_URL="filesystem://", REDIS_URL=""
    )
    assert _started(result) == str(REPO / "var" / "celery-broker" / "control")


# --- production security ------------------------------------------------------------------------------------------


def test_a_production_configuration_passes_the_deploy_check_without_hsts_or_ssl_warnings():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO,
        env=_environment(
            {"DJANGO_SECURE_SSL_REDIRECT": "true", "DJANGO_SECURE_PROXY_SSL_HEADER": "true", "DJANGO_DEBUG": "false"}
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    warnings = set(re.findall(r"\((security\.W\d+)\)", output))
    # Left: HSTS for subdomains and preloading, which only the domain's owner can decide.
    assert warnings <= {"security.W005", "security.W021"}, output


def test_hsts_is_on_outside_debug_and_off_in_debug():
    assert _started(_start("settings.SECURE_HSTS_SECONDS")) == "31536000"
    assert _started(_start("settings.SECURE_HSTS_SECONDS", DJANGO_DEBUG="true")) == "0"


# --- PgBouncer (transaction pooling) ------------------------------------------------------------------------------

_DATABASE = (
    "{k: v for k, v in settings.DATABASES['default'].items() if k in ('OPTIONS', 'DISABLE_SERVER_SIDE_CURSORS')}"
)


def _database(**overrides: str | None) -> dict:
    """The OPTIONS and DISABLE_SERVER_SIDE_CURSORS of the default database, as started with `overrides`."""
    return ast.literal_eval(_started(_start(_DATABASE, **overrides)))


def test_without_pgbouncer_every_connection_sends_its_timeouts_as_options():
    database = _database(DB_STATEMENT_TIMEOUT_MS="1234")
    assert database["OPTIONS"]["options"] == (
        "-c statement_timeout=1234 -c lock_timeout=1000 -c idle_in_transaction_session_timeout=10000"
    )
    assert "DISABLE_SERVER_SIDE_CURSORS" not in database


def test_behind_pgbouncer_no_options_are_sent_and_prepared_statements_and_server_side_cursors_are_off():
    database = _database(DB_PGBOUNCER="true")
    assert "options" not in database["OPTIONS"]  # PgBouncer refuses the startup parameter
    assert "prepare_threshold" in database["OPTIONS"]
    assert database["OPTIONS"]["prepare_threshold"] is None
    assert database["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert database["OPTIONS"]["pool"]["max_size"] == 4  # Django's pool still in front of PgBouncer


@pytest.mark.parametrize("value", ["yes please", "2", "pgbouncer"])
def test_a_pgbouncer_flag_that_is_not_a_boolean_stops_the_start(value):
    _refused(_start(DB_PGBOUNCER=value), "DB_PGBOUNCER")


# --- the Supabase project keys ---------------------------------------------------------


def test_a_service_role_key_shorter_than_32_bytes_is_refused():
    _refused(_start(SUPABASE_SERVICE_ROLE_KEY="short"), "SUPABASE_SERVICE_ROLE_KEY")


def test_a_service_role_key_equal_to_the_anon_key_is_refused():
    same = "k" * 40
    message = _refused(_start(SUPABASE_SERVICE_ROLE_KEY=same, SUPABASE_ANON_KEY=same), "SUPABASE_SERVICE_ROLE_KEY")
    assert "differ" in message


def test_earlier_secret_keys_are_read_as_fallbacks():
    earlier = "a" * 40 + ", " + "b" * 40
    assert _started(_start("settings.SECRET_KEY_FALLBACKS", DJANGO_SECRET_KEY_FALLBACKS=earlier)) == str(
        ["a" * 40, "b" * 40]
    )
    assert _started(_start("settings.SECRET_KEY_FALLBACKS")) == "[]"
