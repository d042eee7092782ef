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
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from monitoring import checks, context, metrics, slo
from monitoring.middleware import is_fast_lane
from velro.errors import error_body

PROCESS_STARTED = datetime.now(UTC).isoformat()


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """Liveness: touches no database or cache."""
    return JsonResponse({"status": "ok"})


class _DependencyOutput(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "down", "degraded"])
    latency_ms = serializers.FloatField()
    error = serializers.CharField(required=False)


class ReadinessOutput(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "down", "degraded"])
    database = _DependencyOutput()
    cache = _DependencyOutput()
    broker = _DependencyOutput()
    pool = serializers.DictField()
    checked_at = serializers.DateTimeField()


class ProbeView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]


class PingView(ProbeView):
    @extend_schema(
        responses={200: ReadinessOutput, 503: ReadinessOutput},
        summary="Readiness: 200 while the database answers, 503 (+ Retry-After) when it does not",
    )
    def get(self, request: Request) -> Response:
        result = checks.readiness()
        if result["database"]["status"] == "ok":
            return Response(result)
        return Response(result, status=503, headers={"Retry-After": "2"})


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


class MiddlewareStatusOutput(serializers.Serializer):
    path = serializers.CharField()
    fast_lane = serializers.BooleanField()
    ran = serializers.ListField(child=serializers.CharField())
    skipped = serializers.ListField(child=serializers.CharField())


class MiddlewareStatusView(ProbeView):
    @extend_schema(responses={200: MiddlewareStatusOutput}, summary="Which middleware ran for this request")
    def get(self, request: Request) -> Response:
        """Which middleware ran for this very request, and which stepped aside."""
        record = context.current()
        skipped = record.middleware_skipped if record else []
        names = [path.rsplit(".", 1)[1] for path in settings.MIDDLEWARE]
        ran = [name for name in names if name.removeprefix("FastLane") not in skipped]
        return Response(
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
