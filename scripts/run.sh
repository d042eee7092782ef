#!/usr/bin/env bash
# Velro: THE run command. Runs the whole stack on this machine in the
# foreground: gunicorn (web) + Celery worker + Celery beat. Ctrl-C stops all
# three; if one of them dies, the others are stopped and the script fails.
#
# Backing services, best available first:
#   database  PostgreSQL on 127.0.0.1:5432 (role root, database "velro"),
#             else embedded SQLite in var/velro.sqlite3
#   cache     Redis 127.0.0.1:6379/0, else a per-process local-memory cache
#   broker    Redis 127.0.0.1:6379/1, else the filesystem broker in var/celery-broker
#   email     SMTP on 127.0.0.1:1025 (e.g. Mailpit), else a local mail catcher
#             writing every message to var/mail/*.eml
#
# Variables already set in the environment (or in var/local.env) are kept,
# e.g. DATABASE_URL, REDIS_URL, CELERY_BROKER_URL, BIND=0.0.0.0:8000, WEB_CONCURRENCY;
# one that names an unreachable address stops the script with one clear line.
# The choices are written to var/run.env: ./scripts/manage.sh runs operator
# commands (createsuperuser, ...) against exactly that stack.
# It does not install PostgreSQL or Redis: ./scripts/test.sh does that.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/services.sh
source scripts/services.sh

# shellcheck source=scripts/local.sh
source scripts/local.sh

log() {
	printf '[run] %s\n' "$*" >&2
}

die() {
	log "ERROR: $*"
	exit 1
}

# --- Backing services (decided first, so the banners are on the first lines) ---

local_env_load
local_services_resolve || exit 1
local_defaults_export

# Email: the configured SMTP server if one listens; on this machine with none,
# a local catcher that writes every message to var/mail/ (started below).
mail_catcher=""
case "$EMAIL_HOST" in
127.0.0.1 | localhost | ::1)
	if ! port_open "$EMAIL_HOST" "$EMAIL_PORT"; then
		mail_catcher=1
		mail_desc="local mail catcher on $EMAIL_HOST:$EMAIL_PORT: every email is written to var/mail/*.eml"
		_local_banner "Nothing listens on SMTP $EMAIL_HOST:$EMAIL_PORT: starting a local mail catcher." \
			"Emails are written to var/mail/*.eml (open them with any mail client or a text editor)."
	else
		mail_desc="SMTP $EMAIL_HOST:$EMAIL_PORT (e.g. Mailpit: http://localhost:8025/)"
	fi
	;;
*) mail_desc="SMTP $EMAIL_HOST:$EMAIL_PORT" ;;
esac

# --- Python environment and local secret ------------------------------------------

ensure_venv requirements.txt
venv_bin="$(cd "$VENV_DIR" && pwd)/bin"
export PATH="$venv_bin:$PATH"
local_secret_ensure
export PYTHONUNBUFFERED=1
local_env_record

# --- Database schema and static files ---------------------------------------------

if ! python manage.py db_apply_timeouts >var/db-timeouts.log 2>&1; then
	die "db_apply_timeouts failed on $VELRO_DB_DESC: $(tail -n 1 var/db-timeouts.log) (full output: var/db-timeouts.log)"
fi
log "migrating ($VELRO_DB_DESC)"
if ! python manage.py migrate --noinput >var/migrate.log 2>&1; then
	die "migrate failed on $VELRO_DB_DESC: $(grep -v '^[[:space:]]' var/migrate.log | tail -n 1) (full output: var/migrate.log)"
fi
log "collecting static files"
python manage.py collectstatic --noinput >/dev/null

# --- Processes ---------------------------------------------------------------------

pids=()
names=()
stopping=""
force=""

start() {
	local name=$1
	shift
	"$@" </dev/null &
	pids+=("$!")
	names+=("$name")
	log "started $name (pid $!): $*"
}

alive() {
	local pid
	for pid in "${pids[@]}"; do
		if kill -0 "$pid" 2>/dev/null; then
			return 0
		fi
	done
	return 1
}

# TERM to each process (gunicorn and Celery shut down gracefully on TERM); after
# 30 s, or on a second Ctrl-C, KILL whatever is left, whole process groups.
stop_all() {
	[[ -z "$stopping" ]] || return 0
	stopping=1
	trap 'force=1' INT TERM
	local pid deadline=$((SECONDS + 30))
	if ((${#pids[@]} > 0)); then
		log "stopping the stack (Ctrl-C again to kill at once)"
		for pid in "${pids[@]}"; do
			kill -TERM "$pid" 2>/dev/null || true
		done
		while alive && [[ -z "$force" ]] && ((SECONDS < deadline)); do
			sleep 0.5
		done
		for pid in "${pids[@]}"; do
			kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
		done
		wait 2>/dev/null || true
	fi
	log "stopped"
}

# shellcheck disable=SC2317  # invoked from the traps below
on_signal() {
	stop_all
	exit "$1"
}

trap 'on_signal 130' INT
trap 'on_signal 143' TERM
trap 'stop_all' EXIT

# Job control: each child gets its own process group, so Ctrl-C reaches only
# this script, which then stops the children in order (and can kill their
# whole group, pool processes included, if they hang).
set -m

if [[ -n "$mail_catcher" ]]; then
	start mail python -m velro.mailcatcher --host "$EMAIL_HOST" --port "$EMAIL_PORT" --dir var/mail
fi
start web gunicorn -c gunicorn.conf.py velro.wsgi:application
start worker celery -A velro worker --loglevel=INFO --concurrency=2
start beat celery -A velro beat --loglevel=INFO --schedule var/celerybeat-schedule

case "$BIND" in
unix:*) url="$BIND" ;;
*)
	host="${BIND%:*}"
	port="${BIND##*:}"
	[[ "$host" != "$BIND" ]] || port=8000
	case "$host" in "" | 0.0.0.0 | "[::]") host=localhost ;; esac
	url="http://$host:$port/"
	;;
esac
log "Velro: $url  (health: ${url}health, admin: ${url}admin/)"
log "database: $VELRO_DB_DESC; cache: ${REDIS_URL:-local memory}; broker: $CELERY_BROKER_URL"
log "email: $mail_desc"
log "operator commands on this stack: ./scripts/manage.sh createsuperuser (any manage.py command)"
log "Ctrl-C stops everything"

status=0
finished=""
wait -n -p finished "${pids[@]}" || status=$?
name="?"
for i in "${!pids[@]}"; do
	if [[ "${pids[$i]}" == "${finished:-}" ]]; then
		name="${names[$i]}"
	fi
done
log "$name exited (status $status): stopping the others"
stop_all
exit $((status == 0 ? 1 : status))
