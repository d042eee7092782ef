"""Probes and operator endpoints. Plain Django views: no DRF, no session."""

from __future__ import annotations

import platform
import subprocess
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import django
from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from monitoring import checks, metrics, slo
from monitoring.middleware import is_fast_lane
from velro import context
from velro.errors import error_body
from velro.net import is_trusted_caller

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
        if not is_trusted_caller(request):
            result = _public_readiness(result)
        if result["database"]["status"] == "ok":
            return Response(result)
        return Response(result, status=503, headers={"Retry-After": "2"})


def _public_readiness(result: dict) -> dict:
    """What a load balancer needs: the statuses, no error names, no pool internals."""
    public = {key: result[key] for key in ("status", "checked_at") if key in result}
    for name in ("database", "cache", "broker"):
        public[name] = {"status": result[name]["status"]}
    return public


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
    body = {"version": settings.VELRO_VERSION, "commit": _git_commit()}
    if is_trusted_caller(request):  # the runtime's details are for operators only
        body |= {
            "build_time": settings.BUILD_TIME or None,
            "process_started": PROCESS_STARTED,
            "python": platform.python_version(),
            "django": django.get_version(),
        }
    return JsonResponse(body)


class MiddlewareStatusOutput(serializers.Serializer):
    path = serializers.CharField()
    fast_lane = serializers.BooleanField()
    ran = serializers.ListField(child=serializers.CharField())
    skipped = serializers.ListField(child=serializers.CharField())


class MiddlewareStatusView(ProbeView):
    @extend_schema(responses={200: MiddlewareStatusOutput}, summary="Which middleware ran for this request")
    def get(self, request: Request) -> Response:
        """Which middleware ran for this very request, and which stepped aside."""
        if not is_trusted_caller(request):
            return Response(error_body("not_found", "Not found"), status=404)
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


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not is_trusted_caller(request):
        return JsonResponse(error_body("forbidden", "Metrics are restricted"), status=403)
    return HttpResponse(metrics.exposition(), content_type="text/plain; version=0.0.4; charset=utf-8")


@require_GET
@staff_member_required
def slo_status(request: HttpRequest) -> JsonResponse:
    """The auth endpoints' latency percentiles and success rate, from the /metrics histograms."""
    return JsonResponse(slo.evaluate())
