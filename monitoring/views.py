"""Probes and operator endpoints. Plain Django views: no DRF, no session."""

from __future__ import annotations

import ipaddress
import platform
import subprocess
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import django
from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.crypto import constant_time_compare
from django.views.decorators.http import require_GET

from monitoring import checks, context, metrics, slo
from monitoring.middleware import is_fast_lane
from velro.errors import error_body

PROCESS_STARTED = datetime.now(UTC).isoformat()


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """Liveness: touches no database or cache."""
    return JsonResponse({"status": "ok"})


@require_GET
def ping(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 while the database answers, 503 when it does not."""
    result = checks.readiness()
    response = JsonResponse(result, status=200 if result["database"]["status"] == "ok" else 503)
    if response.status_code == 503:
        response["Retry-After"] = "2"
    return response


@cache
def _git_commit() -> str:
    if settings.GIT_COMMIT:
        return settings.GIT_COMMIT
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],  # noqa: S607  (git from PATH, dev checkouts only)
            cwd=Path(settings.BASE_DIR),
            capture_output=True,
            text=True,
            timeout=2,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@require_GET
def version(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "version": settings.VELRO_VERSION,
            "commit": _git_commit(),
            "build_time": settings.BUILD_TIME or None,
            "process_started": PROCESS_STARTED,
            "python": platform.python_version(),
            "django": django.get_version(),
        }
    )


@require_GET
def middleware_status(request: HttpRequest) -> JsonResponse:
    """Which middleware ran for this very request, and which stepped aside."""
    record = context.current()
    skipped = record.middleware_skipped if record else []
    names = [path.rsplit(".", 1)[1] for path in settings.MIDDLEWARE]
    ran = [name for name in names if name.removeprefix("FastLane") not in skipped]
    return JsonResponse(
        {
            "path": request.path,
            "fast_lane": is_fast_lane(request.path_info),
            "ran": ran,
            "skipped": [f"FastLane{name}" for name in skipped],
        }
    )


def _metrics_allowed(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if token and header.startswith("Bearer ") and constant_time_compare(header[7:], token):
        return True
    try:
        remote = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(remote in network for network in settings.METRICS_ALLOWED_NETWORKS)


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _metrics_allowed(request):
        return JsonResponse(error_body("forbidden", "Metrics are restricted"), status=403)
    slo.publish()
    return HttpResponse(metrics.exposition(), content_type="text/plain; version=0.0.4; charset=utf-8")


@require_GET
@staff_member_required
def slo_status(request: HttpRequest) -> JsonResponse:
    return JsonResponse(slo.evaluate(log=False))
