from django.http import HttpRequest, JsonResponse


def health(request: HttpRequest) -> JsonResponse:
    """Liveness: touches no database or cache."""
    return JsonResponse({"status": "ok"})
