#!/bin/sh
# docker-compose.yml's prometheus: hand METRICS_TOKEN (the web service's /metrics
# bearer token) to Prometheus as a file on a tmpfs, then run Prometheus.
set -eu
if [ -z "${METRICS_TOKEN:-}" ]; then
	echo "prometheus: METRICS_TOKEN is not set: export METRICS_TOKEN before docker compose up (README: Monitoring)" >&2
	exit 1
fi
umask 077
printf '%s' "$METRICS_TOKEN" >/run/velro/metrics_token
exec /bin/prometheus "$@"
