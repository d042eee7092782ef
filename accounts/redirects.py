"""Where an email link may send a browser: GOTRUE_SITE_URL or GOTRUE_URI_ALLOW_LIST, nowhere else.

GoTrue's rule (utilities.IsRedirectURLValid): the site's scheme and host (any
port on a loopback host), or a loopback IP, or a match of an allow-list glob
(`*` stops at `.` and `/`, `**` does not), matched without the fragment.
Anything else is not an error: the site URL is used instead (GetReferrer), so
a forged `redirect_to` can never take a user's session elsewhere.
"""

from __future__ import annotations

import ipaddress
import re
from functools import cache
from urllib.parse import urlsplit

from django.conf import settings

_DECIMAL_HOST = re.compile(r"^[0-9]+$")
_REGULAR_HOST = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?$")


@cache
def _glob(pattern: str) -> re.Pattern[str]:
    out, index = [], 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**", index):
            out.append(".*")
            index += 2
            continue
        if char == "*":
            out.append("[^./]*")
        elif char == "?":
            out.append("[^./]")
        else:
            out.append(re.escape(char))
        index += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redirect_allowed(url: str) -> bool:
    if not url or any(char in url for char in "\r\n\t\\") or url.startswith("//"):
        return False
    try:
        site, target = urlsplit(settings.GOTRUE_SITE_URL), urlsplit(url)
        target_port = target.port
        site_port = site.port
    except ValueError:
        return False
    host = (target.hostname or "").lower()
    if not target.scheme or not host:
        return False
    same_site = host == (site.hostname or "").lower() and target.scheme == site.scheme
    if same_site and (target_port == site_port or _loopback(host)):
        return True
    http = target.scheme.lower() in ("http", "https")
    if _DECIMAL_HOST.match(host):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if http and not _REGULAR_HOST.match(host):
        return False
    without_fragment = url.split("#", 1)[0]
    return any(_glob(pattern).match(without_fragment) for pattern in settings.GOTRUE_URI_ALLOW_LIST)


def redirect_target(requested: str | None, fallback: str = "") -> str:
    """The requested URL if allowed, else the allowed fallback, else the site URL."""
    for candidate in (requested or "", fallback):
        if redirect_allowed(candidate):
            return candidate
    return settings.GOTRUE_SITE_URL
