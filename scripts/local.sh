# shellcheck shell=bash
# Velro: how ./scripts/run.sh and ./scripts/manage.sh choose what to run on.
#
# Source it from bash after scripts/services.sh; do not execute it.
#
#   local_env_load           var/local.env (your settings and the generated secret key);
#                            variables already in the environment win
#   local_services_resolve   DATABASE_URL, REDIS_URL, CELERY_BROKER_URL: a variable you set
#                            is checked (one clear line and exit 1 if its address cannot be
#                            reached); an unset one gets the best local choice: PostgreSQL
#                            and Redis on 127.0.0.1 if they answer, else the embedded default
#                            (SQLite, local-memory cache, file-system broker)
#   local_env_record         write those choices to var/run.env, which manage.sh reads, so
#                            operator commands target exactly what run.sh runs
#   local_secret_ensure      DJANGO_SECRET_KEY from var/local.env, generated there once

VELRO_LOCAL_ENV=var/local.env
VELRO_RUN_ENV=var/run.env

_local_log() {
	printf '[run] %s\n' "$*" >&2
}

_local_banner() {
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
			_local_log "ignoring malformed line in $file: $line"
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

local_env_load() {
	mkdir -p var
	if [[ -f "$VELRO_LOCAL_ENV" ]]; then
		load_env_file "$VELRO_LOCAL_ENV"
	fi
}

# Stop with one line when a service the caller chose explicitly is unreachable:
# falling back would silently run on other data than the caller asked for.
_local_require_reachable() {
	local name=$1 value=$2 address
	[[ -n "$value" ]] || return 0
	if ! address="$(url_unreachable_address "$value")"; then
		_local_log "ERROR: $name points at $address, which is not reachable. Start that service, fix $name, or unset it to use the local default."
		return 1
	fi
}

local_services_resolve() {
	local explicit_db="${DATABASE_URL+set}" explicit_redis="${REDIS_URL+set}" explicit_broker="${CELERY_BROKER_URL+set}"
	[[ -z "$explicit_db" ]] || _local_require_reachable DATABASE_URL "$DATABASE_URL" || return 1
	[[ -z "$explicit_redis" ]] || _local_require_reachable REDIS_URL "$REDIS_URL" || return 1
	[[ -z "$explicit_broker" ]] || _local_require_reachable CELERY_BROKER_URL "$CELERY_BROKER_URL" || return 1

	local sqlite_url="sqlite:///$PWD/var/velro.sqlite3"
	if [[ -n "$explicit_db" ]]; then
		VELRO_DB_DESC="DATABASE_URL from the environment"
	elif pg_reachable && create_db velro 2>/dev/null; then
		DATABASE_URL=postgres://root@127.0.0.1:5432/velro
		VELRO_DB_DESC="PostgreSQL 127.0.0.1:5432/velro"
	else
		DATABASE_URL="$sqlite_url"
		VELRO_DB_DESC="SQLite var/velro.sqlite3"
		if pg_reachable; then
			_local_banner "PostgreSQL on 127.0.0.1:5432 is up but role 'root' cannot use it: using embedded SQLite (var/velro.sqlite3)" \
				"Fix: ./scripts/test.sh sets PostgreSQL up, or export DATABASE_URL=postgres://..."
		else
			_local_banner "PostgreSQL not reachable on 127.0.0.1:5432: using embedded SQLite (var/velro.sqlite3)" \
				"For PostgreSQL: start it (./scripts/test.sh installs it), or export DATABASE_URL=postgres://..."
		fi
	fi

	local redis_up="" fallbacks=()
	if [[ -z "$explicit_redis" || -z "$explicit_broker" ]] && redis_reachable; then
		redis_up=1
	fi
	if [[ -z "$explicit_broker" ]]; then
		if [[ -n "$redis_up" ]]; then
			CELERY_BROKER_URL=redis://127.0.0.1:6379/1
		elif [[ -n "${REDIS_URL:-}" ]]; then
			CELERY_BROKER_URL="$REDIS_URL" # REDIS_URL given by the caller: the broker follows it
		else
			CELERY_BROKER_URL=filesystem://
			fallbacks+=("the file-system Celery broker (var/celery-broker)")
		fi
	fi
	if [[ -z "$explicit_redis" ]]; then
		if [[ -n "$redis_up" ]]; then
			REDIS_URL=redis://127.0.0.1:6379/0
		else
			REDIS_URL="" # empty: the settings fall back to a local-memory cache
			fallbacks=("a local-memory cache (per process)" "${fallbacks[@]}")
		fi
	fi
	if ((${#fallbacks[@]} > 0)); then
		_local_banner "Redis not reachable on 127.0.0.1:6379: using ${fallbacks[0]}${fallbacks[1]:+ and ${fallbacks[1]}}" \
			"For Redis: start redis-server (./scripts/test.sh installs it), or export REDIS_URL / CELERY_BROKER_URL"
	fi
	export DATABASE_URL REDIS_URL CELERY_BROKER_URL VELRO_DB_DESC
}

local_env_record() {
	local name
	{
		printf '# Written by ./scripts/run.sh at each start: what it runs on. ./scripts/manage.sh\n'
		printf '# reads it so operator commands target the same database, cache and broker.\n'
		for name in DATABASE_URL REDIS_URL CELERY_BROKER_URL EMAIL_HOST EMAIL_PORT BIND DJANGO_ALLOWED_HOSTS; do
			printf '%s=%s\n' "$name" "${!name:-}"
		done
	} >"$VELRO_RUN_ENV"
}

local_secret_ensure() {
	[[ -z "${DJANGO_SECRET_KEY:-}" ]] || return 0
	if ! grep -q '^DJANGO_SECRET_KEY=' "$VELRO_LOCAL_ENV" 2>/dev/null; then
		_local_log "generating a local secret key in $VELRO_LOCAL_ENV"
		(
			umask 077
			if [[ ! -f "$VELRO_LOCAL_ENV" ]]; then
				printf '# Local settings for ./scripts/run.sh (git-ignored). KEY=VALUE lines;\n' >"$VELRO_LOCAL_ENV"
				printf '# variables set in the environment take precedence.\n' >>"$VELRO_LOCAL_ENV"
			fi
			printf 'DJANGO_SECRET_KEY=%s\n' "$(random_secret 64)" >>"$VELRO_LOCAL_ENV"
		)
	fi
	unset DJANGO_SECRET_KEY
	load_env_file "$VELRO_LOCAL_ENV"
	export DJANGO_SECRET_KEY
}

# The defaults both scripts share (after the choices above).
local_defaults_export() {
	export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-velro.settings}"
	export DJANGO_DEBUG="${DJANGO_DEBUG:-false}"
	export DJANGO_ALLOWED_HOSTS="${DJANGO_ALLOWED_HOSTS:-localhost,127.0.0.1}"
	export EMAIL_HOST="${EMAIL_HOST:-127.0.0.1}"
	export EMAIL_PORT="${EMAIL_PORT:-1025}"
	export BIND="${BIND:-127.0.0.1:8000}"
}
