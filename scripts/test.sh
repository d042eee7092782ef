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
ensure_chromium
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

step "makemigrations --check"
.venv/bin/python manage.py makemigrations --check --dry-run

step "manage.py check"
.venv/bin/python manage.py check

step "pytest $*"
.venv/bin/pytest "$@"

printf '\n[test] all checks passed\n' >&2
