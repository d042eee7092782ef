"""Moved to velro.context (the platform layer); kept as an alias for monitoring.logging."""

from velro.context import (
    REQUEST_ID_RE,
    RequestRecord,
    begin,
    current,
    current_request_id,
    phase,
    request_id_from,
)

__all__ = ["REQUEST_ID_RE", "RequestRecord", "begin", "current", "current_request_id", "phase", "request_id_from"]
