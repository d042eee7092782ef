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
#   email     SMTP on 127.0.0.1:1025 (e.g. Mailpit); mail is retried while nothing listens
#
# Variables already set in the environment (or in var/local.env) are kept,
# e.g. DATABASE_URL, REDIS_URL, CELERY_BROKER_URL, BIND=0.0.0.0:8000, WEB_CONCURRENCY.
# It does not install PostgreSQL or Redis: ./scripts/test.sh does that.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/services.sh
source scripts/services.sh

log() {
	printf '[run] %s\n' "$*" >&2
}

banner() {
	printf '[run] %s\n' \
		'****************************************************************************' \
		"$@" \
		'****************************************************************************' >&2
}

# KEY=VALUE lines (comments, blank lines, "export " and one level of quotes
# allowed); a variable already in the environment wins over the file.
load_env_file() {
	local file=$1 line key value
	while IFS= read -r line || [[ -n "$line" ]]; do
		[[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
		line="${line#export }"
		key="${line%%=*}"
		value="${line#*=}"
		if [[ "$line" != *=* || ! "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
			log "ignoring malformed line in $file: $line"
			continue
		fi
		if [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]]; then
			value="${BASH_REMATCH[1]}"
		fi
		if [[ -z "${!key+set}" ]]; then
			export "$key=$value"
		fi
	done <"$file"
}

mkdir -p var
LOCAL_ENV=var/local.env
if [[ -f "$LOCAL_ENV" ]]; then
	load_env_file "$LOCAL_ENV"
fi

# --- Backing services (decided first, so the banners are on the first lines) ---

sqlite_url="sqlite:///$PWD/var/velro.sqlite3"
if [[ -z "${DATABASE_URL+set}" ]]; then
	if pg_reachable; then
		if create_db velro; then
			DATABASE_URL=postgres://root@127.0.0.1:5432/velro
			db_desc="PostgreSQL 127.0.0.1:5432/velro"
		else
			DATABASE_URL="$sqlite_url"
			db_desc="SQLite var/velro.sqlite3"
			banner "PostgreSQL on 127.0.0.1:5432 is up but role 'root' cannot use it: using embedded SQLite (var/velro.sqlite3)" \
				"Fix: ./scripts/test.sh sets PostgreSQL up, or export DATABASE_URL=postgres://..."
		fi
	else
		DATABASE_URL="$sqlite_url"
		db_desc="SQLite var/velro.sqlite3"
		banner "PostgreSQL not reachable on 127.0.0.1:5432: using embedded SQLite (var/velro.sqlite3)" \
			"For PostgreSQL: start it (./scripts/test.sh installs it), or export DATABASE_URL=postgres://..."
	fi
else
	db_desc="DATABASE_URL from the environment"
fi

redis_up=""
if [[ -z "${REDIS_URL+set}" || -z "${CELERY_BROKER_URL+set}" ]] && redis_reachable; then
	redis_up=1
fi
fallbacks=()
if [[ -z "${CELERY_BROKER_URL+set}" ]]; then
	if [[ -n "$redis_up" ]]; then
		CELERY_BROKER_URL=redis://127.0.0.1:6379/1
	elif [[ -n "${REDIS_URL:-}" ]]; then
		# REDIS_URL given by the caller: the settings use it for the broker too.
		CELERY_BROKER_URL="$REDIS_URL"
	else
		CELERY_BROKER_URL=filesystem://
		mkdir -p var/celery-broker
		fallbacks+=("the filesystem Celery broker (var/celery-broker)")
	fi
fi
if [[ -z "${REDIS_URL+set}" ]]; then
	if [[ -n "$redis_up" ]]; then
		REDIS_URL=redis://127.0.0.1:6379/0
	else
		# Empty: the settings fall back to a local-memory cache.
		REDIS_URL=""
		fallbacks=("a local-memory cache (per process)" "${fallbacks[@]}")
	fi
fi
if ((${#fallbacks[@]} > 0)); then
	banner "Redis not reachable on 127.0.0.1:6379: using ${fallbacks[0]}${fallbacks[1]:+ and ${fallbacks[1]}}" \
		"For Redis: start redis-server (./scripts/test.sh installs it), or export REDIS_URL / CELERY_BROKER_URL"
fi

# --- Python environment and local secret ------------------------------------------

ensure_venv requirements.txt
export PATH="$PWD/.venv/bin:$PATH"

if [[ -z "${DJANGO_SECRET_KEY:-}" ]]; then
	if ! grep -q '^DJANGO_SECRET_KEY=' "$LOCAL_ENV" 2>/dev/null; then
		log "generating a local secret key in $LOCAL_ENV"
		(
			umask 077
			if [[ ! -f "$LOCAL_ENV" ]]; then
				printf '# Local settings for ./scripts/run.sh (git-ignored). KEY=VALUE lines;\n' >"$LOCAL_ENV"
				printf '# variables set in the environment take precedence.\n' >>"$LOCAL_ENV"
			fi
			printf 'DJANGO_SECRET_KEY=%s\n' "$(random_secret 64)" >>"$LOCAL_ENV"
		)
	fi
	unset DJANGO_SECRET_KEY
	load_env_file "$LOCAL_ENV"
fi

export DATABASE_URL REDIS_URL CELERY_BROKER_URL DJANGO_SECRET_KEY
export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-velro.settings}"
export DJANGO_DEBUG="${DJANGO_DEBUG:-false}"
export DJANGO_ALLOWED_HOSTS="${DJANGO_ALLOWED_HOSTS:-localhost,127.0.0.1}"
export EMAIL_HOST="${EMAIL_HOST:-127.0.0.1}"
export EMAIL_PORT="${EMAIL_PORT:-1025}"
export BIND="${BIND:-127.0.0.1:8000}"
export PYTHONUNBUFFERED=1

# --- Database schema and static files ---------------------------------------------

log "migrating ($db_desc)"
python manage.py migrate --noinput
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
		log "stopping web, worker and beat (Ctrl-C again to kill at once)"
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
log "database: $db_desc; cache: ${REDIS_URL:-local memory}; broker: $CELERY_BROKER_URL"
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
