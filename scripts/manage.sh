#!/usr/bin/env bash
# Velro: run a manage.py command against the stack ./scripts/run.sh runs.
#
#   ./scripts/manage.sh createsuperuser
#   ./scripts/manage.sh sync_users --dry-run
#
# It reads var/local.env (your settings, the local secret key) and var/run.env
# (the database, cache and broker run.sh chose at its last start). Before any
# run.sh start, it makes the same choices run.sh would. Variables set in the
# environment win, as with run.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/services.sh
source scripts/services.sh
# shellcheck source=scripts/local.sh
source scripts/local.sh

local_env_load
if [[ -f "$VELRO_RUN_ENV" ]]; then
	load_env_file "$VELRO_RUN_ENV"
else
	local_services_resolve || exit 1
fi
local_defaults_export
ensure_venv requirements.txt
local_secret_ensure
exec "$VENV_DIR/bin/python" manage.py "$@"
