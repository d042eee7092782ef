#!/usr/bin/env bash
# Velro: THE test command. Lint, format check, migration check, system check,
# then pytest against real PostgreSQL and Redis (installed and started here if
# needed, on a bare Debian 12 box).
#
#   ./scripts/test.sh                 everything
#   ./scripts/test.sh -k login -x     extra arguments go to pytest
#
# Any variable below that is already set in the environment is kept.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/services.sh
source scripts/services.sh

step() {
	printf '\n[test] === %s\n' "$*" >&2
}

ensure_postgres
ensure_redis
ensure_rabbitmq
ensure_chromium
ensure_pgbouncer
ensure_promtool
ensure_nginx
ensure_wrk
ensure_node_deps
ensure_node_deps accounts/gotrue/tests/oidc # the OpenID Connect provider of the sign-in-with-provider tests
ensure_venv requirements-dev.txt

if [[ -z "${DJANGO_SECRET_KEY:-}" ]]; then
	DJANGO_SECRET_KEY="$(random_secret 50)"
fi
: "${DJANGO_SETTINGS_MODULE:=velro.settings}"
: "${DJANGO_DEBUG:=false}"
# pytest-django creates (and drops) test_velro_test_main next to this name.
: "${DATABASE_URL:=postgres://root@127.0.0.1:5432/velro_test_main}"
: "${REDIS_URL:=redis://127.0.0.1:6379/14}"
: "${CELERY_BROKER_URL:=redis://127.0.0.1:6379/13}"
: "${EMAIL_HOST:=127.0.0.1}"
: "${EMAIL_PORT:=2525}"
: "${DJANGO_ALLOWED_HOSTS:=localhost,127.0.0.1,testserver}"
export DJANGO_SETTINGS_MODULE DJANGO_SECRET_KEY DJANGO_DEBUG DATABASE_URL REDIS_URL \
	CELERY_BROKER_URL EMAIL_HOST EMAIL_PORT DJANGO_ALLOWED_HOSTS
export PYTHONDONTWRITEBYTECODE=1

step "ruff check"
.venv/bin/ruff check .

step "ruff format --check"
.venv/bin/ruff format --check .

# makemigrations checks the migration history against the database: it must
# exist (pytest creates only its test_ copy), or psycopg's pool warns loudly.
if [[ "$DATABASE_URL" =~ ^postgres(ql)?://[^/]*@?(127\.0\.0\.1|localhost)(:5432)?/([A-Za-z_][A-Za-z0-9_]*)$ ]]; then
	create_db "${BASH_REMATCH[4]}"
fi

step "makemigrations --check"
.venv/bin/python manage.py makemigrations --check --dry-run

step "manage.py check"
.venv/bin/python manage.py check

step "pytest $*"
.venv/bin/pytest "$@"

# The embedded default (SQLite, local-memory cache, file-system broker) is a
# supported configuration: the account, token, referral and email flows run on
# it too. Tests marked postgresql skip themselves there. Skipped when pytest
# was given arguments (a focused run).
if (($# == 0)); then
	step "pytest on the embedded default (SQLite, local-memory cache, file-system broker)"
	DATABASE_URL="sqlite:///$PWD/var/test-embedded.sqlite3" REDIS_URL="" CELERY_BROKER_URL="filesystem://" \
		.venv/bin/pytest -m "not integration" \
		accounts/tests/test_signup.py accounts/tests/test_login.py accounts/tests/test_refresh.py \
		accounts/tests/test_logout.py accounts/tests/test_me.py accounts/tests/test_api_keys.py \
		accounts/tests/test_tokens.py accounts/tests/test_users_sync.py accounts/gotrue/tests/test_http.py \
		accounts/tests/test_onetime.py accounts/tests/test_onetime_api.py accounts/gotrue/tests/test_onetime_http.py \
		referrals/tests/test_services.py referrals/tests/test_api.py referrals/tests/test_codes.py \
		notifications/tests/test_services.py
fi

printf '\n[test] all checks passed\n' >&2
