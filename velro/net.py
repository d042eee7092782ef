"""Client IP from the request (X-Forwarded-For only from configured proxies), and
whether the caller may see operational detail."""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest
from django.utils.crypto import constant_time_compare

# Headers a reverse proxy adds: a request carrying any of them came through a
# hop, so its socket address (the proxy's, often loopback) says nothing about
# who the caller is.
PROXY_HEADERS = (
    "HTTP_X_FORWARDED_FOR",
    "HTTP_FORWARDED",
    "HTTP_X_REAL_IP",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PROTO",
)


def _valid_ip(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def client_ip(request: HttpRequest) -> str | None:
    """REMOTE_ADDR, or with N trusted proxies in front, the Nth address from
    the right of X-Forwarded-For (the one our own outermost proxy saw).
    Anything a client can prepend to the header is ignored."""
    remote = _valid_ip(request.META.get("REMOTE_ADDR", ""))
    hops = settings.TRUSTED_PROXY_COUNT
    if hops <= 0:
        return remote
    forwarded = [part for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
    if len(forwarded) < hops:
        return remote
    return _valid_ip(forwarded[-hops]) or remote


def user_agent(request: HttpRequest) -> str:
    return request.META.get("HTTP_USER_AGENT", "")[:256]


def operator_token_presented(request: HttpRequest) -> bool:
    """`Authorization: Bearer <METRICS_TOKEN>` (compared in constant time)."""
    token = settings.METRICS_TOKEN
    header = request.META.get("HTTP_AUTHORIZATION", "")
    return bool(token) and header.startswith("Bearer ") and constant_time_compare(header[7:], token)


def is_trusted_caller(request: HttpRequest) -> bool:
    """May this caller see operational detail (metrics, timings, versions, errors)?

    Yes with the operator token, or for a staff user signed in to the admin, or
    straight from an allowed network (loopback by default) without any proxy
    header. Anyone else, including everyone behind a reverse proxy, sees only
    what a load balancer needs."""
    if operator_token_presented(request):
        return True
    # Only a user the request already loaded (the admin's views do): asking
    # request.user here would hit the session store, and the database, for
    # every request, and fail outside any view when the database is down.
    user = getattr(request, "_cached_user", None)
    if user is not None and getattr(user, "is_staff", False) and user.is_active:
        return True
    if any(name in request.META for name in PROXY_HEADERS):
        return False
    try:
        remote = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(remote in network for network in settings.METRICS_ALLOWED_NETWORKS)
