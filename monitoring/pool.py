"""Database connection pool statistics (Django's native psycopg pool, per process)."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import connection

logger = logging.getLogger("velro.pool")

# Utilisation thresholds (in use / max): below NORMAL is HEALTHY, and so on.
NORMAL, WARNING, CRITICAL = 0.5, 0.8, 0.95


def pool_health(in_use: int, max_size: int, waiting: int) -> str:
    if max_size <= 0:
        return "HEALTHY"
    utilisation = in_use / max_size
    if waiting > 0 or utilisation >= CRITICAL:
        return "CRITICAL"
    if utilisation >= WARNING:
        return "WARNING"
    if utilisation >= NORMAL:
        return "NORMAL"
    return "HEALTHY"


def pool_stats() -> dict[str, Any]:
    """size, in_use, idle, waiting, max and a health status, for this process."""
    pool = getattr(connection, "pool", None)
    if pool is None:
        return {"enabled": False, "status": "HEALTHY"}
    stats = pool.get_stats()
    size = stats.get("pool_size", 0)
    idle = stats.get("pool_available", 0)
    waiting = stats.get("requests_waiting", 0)
    in_use = max(size - idle, 0)
    max_size = settings.DB_POOL_MAX_SIZE
    return {
        "enabled": True,
        "size": size,
        "in_use": in_use,
        "idle": idle,
        "waiting": waiting,
        "max": max_size,
        "timeouts": stats.get("requests_errors", 0),
        "status": pool_health(in_use, max_size, waiting),
    }


def pool_report() -> dict[str, Any]:
    """Log the stats (the periodic check) and publish them as gauges."""
    from monitoring.metrics import POOL

    stats = pool_stats()
    if stats["enabled"]:
        for state in ("size", "in_use", "idle", "waiting"):
            POOL.labels(state).set(stats[state])
    level = logging.WARNING if stats["status"] in {"WARNING", "CRITICAL"} else logging.INFO
    logger.log(level, "db pool %s", stats["status"], extra={"pool": stats})
    return stats
