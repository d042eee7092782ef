# shellcheck shell=bash
# Velro: helpers that bring up local PostgreSQL and Redis and the Python venv.
#
# Source it from bash (scripts/test.sh, scripts/run.sh); do not execute it.
# Every function is safe under `set -euo pipefail`, prints short "[setup] ..."
# lines on stderr and returns non-zero (with a message) when it cannot do its job.
#
#   ensure_postgres          PostgreSQL on 127.0.0.1:5432 with a trust-auth superuser role "root"
#                            (installs it with apt-get on a bare Debian box, starts it otherwise)
#   ensure_redis             Redis on 127.0.0.1:6379 (installs redis-server if missing, starts it)
#   ensure_venv REQFILE...   .venv with the requirement files installed (stamped: re-runs are fast)
#   ensure_rabbitmq          RabbitMQ on 127.0.0.1:5672 (installs rabbitmq-server if missing, starts it)
#   ensure_pgbouncer         pgbouncer binary for velro/tests/test_pgbouncer.py (installs it if missing;
#                            each test runs its own pgbouncer, the system service is not used)
#   ensure_promtool          promtool (Debian's prometheus package) for monitoring/tests/test_alert_rules.py
#                            (installs it if missing)
#   ensure_nginx             Debian's nginx binary for velro/tests/test_nginx.py (installs it if missing;
#                            each test runs its own master on a free port, the system service is not used)
#   ensure_chromium          Debian's chromium at /usr/bin/chromium for the admin browser test
#                            (installs it with apt-get if missing; fails soft: warns, returns 0)
#   ensure_node_deps [DIR]   node + npm and `npm ci` of DIR (default accounts/gotrue/tests/js, the
#                            @supabase/auth-js tests; accounts/gotrue/tests/oidc: the local OpenID
#                            Connect provider, which needs node >= 20.19; stamped by the lockfile:
#                            re-runs stay offline)
#   pg_reachable             0 if PostgreSQL accepts connections on 127.0.0.1:5432 (never installs)
#   redis_reachable          0 if Redis answers PING on 127.0.0.1:6379 (never installs)
#   create_db NAME           create database NAME as role root unless it exists
#   random_secret [LENGTH]   print a random [A-Za-z0-9] string (default 50 characters)

if [[ -n "${_VELRO_SERVICES_SH:-}" ]]; then
	return 0
fi
_VELRO_SERVICES_SH=1

VELRO_PG_HOST=127.0.0.1
VELRO_PG_PORT=5432
VELRO_PG_ROLE=root
VELRO_PG_CLUSTER=main
VELRO_REDIS_HOST=127.0.0.1
VELRO_REDIS_PORT=6379
VENV_DIR="${VENV_DIR:-.venv}"
_VELRO_APT_UPDATED=""

_setup_log() {
	printf '[setup] %s\n' "$*" >&2
}

_setup_die() {
	printf '[setup] ERROR: %s\n' "$*" >&2
	return 1
}

_have() {
	command -v "$1" >/dev/null 2>&1
}

# Run a command as root (directly, or through sudo when we are not root).
_as_root() {
	if [[ "$(id -u)" == 0 ]]; then
		"$@"
	elif _have sudo; then
		sudo -n "$@"
	else
		_setup_die "need root (or sudo) to run: $*"
	fi
}

# Run a command as the postgres OS user (peer auth on the local socket).
_as_postgres() {
	if [[ "$(id -u)" == 0 ]] && _have runuser; then
		(cd / && runuser -u postgres -- "$@")
	elif [[ "$(id -u)" == 0 ]]; then
		(cd / && su postgres -s /bin/sh -c "$(printf '%q ' "$@")")
	elif _have sudo; then
		(cd / && sudo -n -u postgres "$@")
	else
		_setup_die "need root (or sudo) to act as the postgres user"
	fi
}

_apt_install() {
	_have apt-get || _setup_die "apt-get not found: install $* yourself" || return 1
	local log
	log="$(mktemp)"
	if [[ -z "$_VELRO_APT_UPDATED" ]]; then
		_setup_log "apt-get update"
		if ! _as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null >"$log" 2>&1; then
			tail -n 20 "$log" >&2
			rm -f "$log"
			_setup_die "apt-get update failed"
			return 1
		fi
		_VELRO_APT_UPDATED=1
	fi
	_setup_log "apt-get install $*"
	if ! _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
		</dev/null >"$log" 2>&1; then
		tail -n 20 "$log" >&2
		rm -f "$log"
		_setup_die "apt-get install $* failed"
		return 1
	fi
	rm -f "$log"
}

# Wait until "$@" succeeds, at most $1 seconds (polling twice a second).
_wait_for() {
	local seconds=$1
	shift
	local tries=$((seconds * 2))
	while ((tries > 0)); do
		if "$@" >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.5
		tries=$((tries - 1))
	done
	return 1
}

# --- PostgreSQL ----------------------------------------------------------------

pg_reachable() {
	if _have pg_isready; then
		pg_isready -q -h "$VELRO_PG_HOST" -p "$VELRO_PG_PORT" -t 3 >/dev/null 2>&1
	else
		# No client tools: a TCP connect is the best we can do.
		(exec 3<>"/dev/tcp/$VELRO_PG_HOST/$VELRO_PG_PORT") >/dev/null 2>&1
	fi
}

# 0 if role root can log in over TCP (trust/peer config permitting) with CREATEDB rights.
_pg_role_usable() {
	local ok
	ok="$(psql -X -q -h "$VELRO_PG_HOST" -p "$VELRO_PG_PORT" -U "$VELRO_PG_ROLE" -d postgres -w -tAc \
		"select rolsuper or rolcreatedb from pg_roles where rolname = current_user" 2>/dev/null)" || return 1
	[[ "$ok" == t ]]
}

_pg_latest_version() {
	# shellcheck disable=SC2012  # version directory names only
	ls /etc/postgresql 2>/dev/null | sort -V | tail -1
}

# On a cluster this script created: let 127.0.0.1 / ::1 connect without a password
# (local tests only). Never called on a pre-existing install.
_pg_hba_trust_loopback() {
	local hba=$1
	if grep -Eq '^[[:space:]]*host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
		return 0
	fi
	_setup_log "pg_hba: trust for 127.0.0.1/::1 (fresh local install)"
	local tmp
	tmp="$(mktemp)"
	{
		printf '# Added by velro scripts/services.sh: local test cluster, loopback trusted.\n'
		printf 'host    all    all    127.0.0.1/32    trust\n'
		printf 'host    all    all    ::1/128         trust\n'
		cat "$hba"
	} >"$tmp"
	_as_root cp "$tmp" "$hba"
	rm -f "$tmp"
}

ensure_postgres() {
	if ! pg_reachable; then
		local fresh="" version
		version="$(_pg_latest_version)"
		if [[ -z "$version" ]]; then
			_setup_log "PostgreSQL not installed: installing it"
			_apt_install postgresql || return 1
			fresh=1
			version="$(_pg_latest_version)"
			[[ -n "$version" ]] || _setup_die "postgresql installed but /etc/postgresql is empty" || return 1
		fi
		local cluster=$VELRO_PG_CLUSTER
		if [[ ! -d "/etc/postgresql/$version/$cluster" ]]; then
			_setup_log "creating cluster $version/$cluster"
			_as_root pg_createcluster "$version" "$cluster" -p "$VELRO_PG_PORT" >/dev/null ||
				_setup_die "pg_createcluster $version $cluster failed" || return 1
			fresh=1
		fi
		if [[ -n "$fresh" ]]; then
			_pg_hba_trust_loopback "/etc/postgresql/$version/$cluster/pg_hba.conf" || return 1
		fi
		# The package's postinst may already have started it (and it may be
		# starting right now): start only if it is still down, reload to pick up pg_hba.
		if pg_reachable; then
			[[ -z "$fresh" ]] || _as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" reload || true
		else
			_setup_log "starting PostgreSQL $version/$cluster"
			_as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start ||
				_setup_log "pg_ctlcluster start returned non-zero; waiting for the server anyway"
		fi
		if ! _wait_for 30 pg_reachable; then
			_setup_die "PostgreSQL did not become ready on $VELRO_PG_HOST:$VELRO_PG_PORT within 30 s" \
				"(see /var/log/postgresql/postgresql-$version-$cluster.log)"
			return 1
		fi
	fi
	_have psql || _apt_install postgresql-client || return 1

	if ! _pg_role_usable; then
		# A missing role is created as superuser (a local dev/test cluster); an
		# existing one only gets what the tests need (LOGIN, CREATEDB).
		_setup_log "creating PostgreSQL role '$VELRO_PG_ROLE' (or granting it LOGIN CREATEDB)"
		_as_postgres psql -X -q -p "$VELRO_PG_PORT" -v ON_ERROR_STOP=1 -d postgres -c "DO \$\$ BEGIN
			IF EXISTS (SELECT FROM pg_roles WHERE rolname = '$VELRO_PG_ROLE') THEN
				ALTER ROLE \"$VELRO_PG_ROLE\" WITH LOGIN CREATEDB;
			ELSE
				CREATE ROLE \"$VELRO_PG_ROLE\" WITH LOGIN SUPERUSER;
			END IF;
		END \$\$;" >/dev/null || _setup_die "could not create role '$VELRO_PG_ROLE' as the postgres user" || return 1
		if ! _pg_role_usable; then
			_setup_die "role '$VELRO_PG_ROLE' exists but 'psql -h $VELRO_PG_HOST -U $VELRO_PG_ROLE' cannot log in:" \
				"allow trust (or set PGPASSWORD) for 127.0.0.1 in pg_hba.conf"
			return 1
		fi
	fi
	_setup_log "PostgreSQL ready on $VELRO_PG_HOST:$VELRO_PG_PORT (role $VELRO_PG_ROLE)"
}

create_db() {
	local name=${1:?create_db NAME}
	[[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || _setup_die "create_db: bad database name '$name'" || return 1
	local exists
	exists="$(psql -X -q -h "$VELRO_PG_HOST" -p "$VELRO_PG_PORT" -U "$VELRO_PG_ROLE" -d postgres -w -tAc \
		"select 1 from pg_database where datname='$name'")" ||
		_setup_die "create_db: cannot query PostgreSQL as role $VELRO_PG_ROLE" || return 1
	if [[ "$exists" == 1 ]]; then
		return 0
	fi
	_setup_log "creating database $name"
	psql -X -q -h "$VELRO_PG_HOST" -p "$VELRO_PG_PORT" -U "$VELRO_PG_ROLE" -d postgres -w \
		-v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$name\"" >/dev/null ||
		_setup_die "create_db: CREATE DATABASE $name failed" || return 1
}

# --- Redis -----------------------------------------------------------------------

redis_reachable() {
	if _have redis-cli; then
		[[ "$(timeout 5 redis-cli -h "$VELRO_REDIS_HOST" -p "$VELRO_REDIS_PORT" ping 2>/dev/null)" == PONG ]]
	else
		# No client: speak RESP over /dev/tcp.
		(
			exec 3<>"/dev/tcp/$VELRO_REDIS_HOST/$VELRO_REDIS_PORT" || exit 1
			printf 'PING\r\n' >&3
			IFS= read -r -t 3 reply <&3 || exit 1
			[[ "${reply%$'\r'}" == +PONG ]]
		) >/dev/null 2>&1
	fi
}

ensure_redis() {
	if redis_reachable; then
		_setup_log "Redis ready on $VELRO_REDIS_HOST:$VELRO_REDIS_PORT"
		return 0
	fi
	if ! _have redis-server || ! _have redis-cli; then
		_setup_log "Redis not installed: installing it"
		_apt_install redis-server redis-tools || return 1
		# The package may have started its own service; use it if it did.
		if _wait_for 3 redis_reachable; then
			_setup_log "Redis ready on $VELRO_REDIS_HOST:$VELRO_REDIS_PORT"
			return 0
		fi
	fi
	_setup_log "starting redis-server on $VELRO_REDIS_HOST:$VELRO_REDIS_PORT (no persistence)"
	(cd / && redis-server --daemonize yes --bind "$VELRO_REDIS_HOST" --port "$VELRO_REDIS_PORT" \
		--save "" --appendonly no) >/dev/null ||
		_setup_die "redis-server failed to start" || return 1
	if ! _wait_for 15 redis_reachable; then
		_setup_die "Redis did not answer PING on $VELRO_REDIS_HOST:$VELRO_REDIS_PORT within 15 s"
		return 1
	fi
	_setup_log "Redis ready on $VELRO_REDIS_HOST:$VELRO_REDIS_PORT"
}

# --- RabbitMQ (the RabbitMQ broker tests) --------------------------------------------

rabbitmq_reachable() {
	timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/5672" >/dev/null 2>&1
}

# RabbitMQ on 127.0.0.1:5672 (guest/guest, loopback) for the RabbitMQ broker tests.
ensure_rabbitmq() {
	if rabbitmq_reachable; then
		_setup_log "RabbitMQ ready on 127.0.0.1:5672"
		return 0
	fi
	if ! _have rabbitmq-server || ! _have rabbitmqctl; then
		_setup_log "RabbitMQ not installed: installing it"
		_apt_install rabbitmq-server || return 1
		if _wait_for 20 rabbitmq_reachable; then
			_setup_log "RabbitMQ ready on 127.0.0.1:5672"
			return 0
		fi
	fi
	_setup_log "starting rabbitmq-server"
	(cd / && _as_root rabbitmq-server -detached) >/dev/null 2>&1 ||
		_setup_log "rabbitmq-server -detached returned non-zero; waiting for it anyway"
	if ! _wait_for 90 rabbitmq_reachable; then
		_setup_die "RabbitMQ did not accept connections on 127.0.0.1:5672 within 90 s (see /var/log/rabbitmq/)"
		return 1
	fi
	_as_root rabbitmqctl -q await_startup >/dev/null 2>&1 || true
	_setup_log "RabbitMQ ready on 127.0.0.1:5672"
}

# --- PgBouncer (the PgBouncer tests start their own) ----------------------------------

ensure_pgbouncer() {
	if _have pgbouncer || [[ -x /usr/sbin/pgbouncer ]]; then
		_setup_log "PgBouncer ready"
		return 0
	fi
	_setup_log "PgBouncer not installed: installing it (the PgBouncer tests start their own)"
	_apt_install pgbouncer || return 1
}

# --- promtool (checks and unit-tests the Prometheus SLO rules) ----------------------

ensure_promtool() {
	if _have promtool; then
		_setup_log "promtool ready ($(promtool --version 2>&1 | head -n 1))"
		return 0
	fi
	_setup_log "promtool not installed: installing Debian's prometheus (for the alert-rule tests)"
	_apt_install prometheus || return 1
	_have promtool || _setup_die "promtool missing after installing prometheus" || return 1
}

# --- nginx (the reverse proxy tests run deploy/nginx/velro.conf under their own master) ----

ensure_nginx() {
	if _have nginx || [[ -x /usr/sbin/nginx ]]; then
		_setup_log "nginx ready"
		return 0
	fi
	_setup_log "nginx not installed: installing Debian's nginx (the reverse proxy tests start their own)"
	_apt_install nginx || return 1
	[[ -x /usr/sbin/nginx ]] || _setup_die "nginx missing after installing it" || return 1
}

# --- wrk (the perf benchmark's saturation runs and its smoke test) -----------------

ensure_wrk() {
	if _have wrk || [[ -x /usr/bin/wrk ]]; then
		_setup_log "wrk ready"
		return 0
	fi
	_setup_log "wrk not installed: installing Debian's wrk (loadtest.benchmark's closed-loop runs)"
	_apt_install wrk || return 1
	[[ -x /usr/bin/wrk ]] || _setup_die "wrk missing after installing it" || return 1
}

# --- Chromium (admin browser test) ---------------------------------------------------

# Playwright drives Debian's chromium through executable_path (no `playwright
# install`). Fails soft: without a browser only that test skips, saying why.
ensure_chromium() {
	local binary=${VELRO_CHROMIUM:-/usr/bin/chromium}
	if [[ -x "$binary" ]]; then
		_setup_log "Chromium ready ($binary)"
		return 0
	fi
	_setup_log "Chromium not installed: installing Debian's chromium (for the admin browser test)"
	if _apt_install chromium fonts-liberation && [[ -x "$binary" ]]; then
		_setup_log "Chromium ready ($binary)"
	else
		_setup_log "WARNING: could not install chromium ($binary missing): the admin browser test will be skipped"
	fi
	return 0
}

# --- Node.js and the auth-js test client (accounts/gotrue/tests/test_authjs.py) ------------

VELRO_NODE_DEPS_DIR=accounts/gotrue/tests/js

_node_major() {
	node -e 'process.stdout.write(process.versions.node.split(".")[0])' 2>/dev/null
}

# The stamp names what `npm ci` installed from: the lockfile, package.json and node's major
# version. npm ci empties node_modules first, so an old stamp never outlives its install.
_node_deps_stamp() {
	local dir=$1
	{
		cat "$dir/package-lock.json" "$dir/package.json"
		_node_major
	} | sha256sum | cut -c1-32
}

ensure_node_deps() {
	local dir=${1:-$VELRO_NODE_DEPS_DIR}
	[[ -f "$dir/package-lock.json" ]] || _setup_die "ensure_node_deps: $dir/package-lock.json not found" || return 1
	if ! _have node || ! _have npm; then
		_setup_log "node/npm not installed: installing Debian's nodejs and npm (for the auth-js tests)"
		_apt_install nodejs npm || true
	fi
	if ! _have node || ! _have npm; then
		_setup_die "node and npm are needed for the @supabase/auth-js tests ($dir): install Node.js >= 20 with npm"
		return 1
	fi
	local major
	major="$(_node_major)"
	# auth-js needs a global fetch (node 18); its 2.109.0 declares >= 20 (what CI runs), and
	# its tests pass on Debian 12's apt nodejs 18.20 too.
	if [[ ! "$major" =~ ^[0-9]+$ ]] || ((major < 18)); then
		_setup_die "node $(node --version 2>/dev/null) is too old for the @supabase/auth-js tests: install Node.js >= 20"
		return 1
	fi
	local stamp
	stamp="$dir/node_modules/.velro-installed-$(_node_deps_stamp "$dir")"
	if [[ -f "$stamp" ]]; then
		_setup_log "node $(node --version) and $dir/node_modules up to date"
		return 0
	fi
	_setup_log "npm ci in $dir (node $(node --version), npm $(npm --version))"
	(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >&2 ||
		_setup_die "npm ci in $dir failed" || return 1
	: >"$stamp"
	_setup_log "$dir/node_modules ready"
}

# --- Python venv -----------------------------------------------------------------

# The given requirement files plus everything they include with -r / --requirement.
_req_closure() {
	local file line inc dir
	for file in "$@"; do
		[[ -f "$file" ]] || _setup_die "requirements file not found: $file" || return 1
		printf '%s\n' "$file"
		dir="$(dirname "$file")"
		while IFS= read -r line || [[ -n "$line" ]]; do
			line="${line%%#*}"
			if [[ "$line" =~ ^[[:space:]]*(-r|--requirement)[[:space:]=]+([^[:space:]]+) ]]; then
				inc="${BASH_REMATCH[2]}"
				[[ "$inc" == /* ]] || inc="$dir/$inc"
				_req_closure "$inc" || return 1
			fi
		done <"$file"
	done
}

_python_ok() {
	"$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' >/dev/null 2>&1
}

_make_venv() {
	local py=${PYTHON:-python3}
	if ! _have "$py"; then
		_setup_log "$py not found: installing python3"
		_apt_install python3 python3-venv || return 1
		py=python3
	fi
	_python_ok "$py" || _setup_die "$py is older than 3.10 (Django 5.2 needs >= 3.10); set PYTHON=..." || return 1
	_setup_log "creating $VENV_DIR with $py ($("$py" --version 2>&1))"
	if ! "$py" -m venv "$VENV_DIR" >/dev/null 2>&1; then
		# Debian ships ensurepip separately (python3-venv / python3.X-venv).
		rm -rf "$VENV_DIR"
		local minor
		minor="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
		_setup_log "python venv support missing: installing python3-venv"
		_apt_install python3-venv "python${minor}-venv" || _apt_install python3-venv || return 1
		"$py" -m venv "$VENV_DIR" || { rm -rf "$VENV_DIR"; _setup_die "python3 -m venv $VENV_DIR failed"; return 1; }
	fi
}

# One stamp per requirement file, named by a digest of the file's content and
# the venv's Python: installing requirements-dev.txt (which includes
# requirements.txt) stamps both, so run.sh and test.sh never reinstall each
# other's set, and a changed file invalidates only its own stamp.
_req_stamp() {
	local file=$1
	{
		realpath "$file"
		"$VENV_DIR/bin/python" -c 'import sys; print(sys.version)'
		cat "$file"
	} | sha256sum | cut -c1-32
}

ensure_venv() {
	(($# > 0)) || set -- requirements.txt
	local files
	files="$(_req_closure "$@")" || return 1

	if [[ -d "$VENV_DIR" ]] && ! _python_ok "$VENV_DIR/bin/python"; then
		_setup_log "$VENV_DIR is broken (its python does not run): recreating it"
		rm -rf "$VENV_DIR"
	fi
	if [[ ! -x "$VENV_DIR/bin/python" ]]; then
		_make_venv || return 1
	fi

	local f missing=""
	while IFS= read -r f; do
		[[ -f "$VENV_DIR/.installed-$(_req_stamp "$f")" ]] || missing=1
	done <<<"$files"
	if [[ -z "$missing" ]]; then
		_setup_log "$VENV_DIR up to date ($*)"
		return 0
	fi

	local req_args=()
	for f in "$@"; do
		req_args+=(-r "$f")
	done
	_setup_log "installing $* into $VENV_DIR"
	PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
		"$VENV_DIR/bin/python" -m pip install --quiet --upgrade pip ||
		_setup_die "pip upgrade failed" || return 1
	PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
		"$VENV_DIR/bin/python" -m pip install --quiet "${req_args[@]}" ||
		_setup_die "pip install ${req_args[*]} failed" || return 1
	while IFS= read -r f; do
		: >"$VENV_DIR/.installed-$(_req_stamp "$f")"
	done <<<"$files"
	_setup_log "$VENV_DIR ready ($*)"
}

# --- Misc ------------------------------------------------------------------------

# 0 if the service a URL names accepts a TCP connection (3 s at most); otherwise
# print "host:port (reason)" and return 1. URLs without a network address
# (sqlite, filesystem, unix sockets) count as reachable. Standard library only:
# it runs before the venv exists.
url_unreachable_address() {
	"${PYTHON:-python3}" - "$1" <<'PY'
import socket
import sys
from urllib.parse import urlsplit

url = urlsplit(sys.argv[1])
ports = {"postgres": 5432, "postgresql": 5432, "pgsql": 5432, "redis": 6379, "rediss": 6379,
         "amqp": 5672, "pyamqp": 5672, "smtp": 25}
if url.scheme not in ports:
    sys.exit(0)
host, port = url.hostname or "localhost", url.port or ports[url.scheme]
try:
    socket.create_connection((host, port), timeout=3).close()
except OSError as exc:
    print(f"{host}:{port} ({exc.strerror or exc})")
    sys.exit(1)
PY
}

# 0 if something accepts TCP connections on HOST PORT (1 s at most).
port_open() {
	timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" >/dev/null 2>&1
}

random_secret() {
	local length=${1:-50} py
	if [[ -x "$VENV_DIR/bin/python" ]]; then
		py="$VENV_DIR/bin/python"
	else
		py="${PYTHON:-python3}"
	fi
	"$py" -c 'import secrets, string, sys
alphabet = string.ascii_letters + string.digits
print("".join(secrets.choice(alphabet) for _ in range(int(sys.argv[1]))))' "$length"
}
