"""GET /passkeys/demo/: a page that runs every passkey call against /auth/v1
with plain fetch, sending what @supabase/auth-js sends (the browser tests drive
it: accounts/gotrue/tests/test_passkeys_browser.py). Served only with
PASSKEY_DEMO_PAGE (on in DEBUG, off by default in production).

The page carries SUPABASE_ANON_KEY from settings: the public project key every
browser client of /auth/v1 holds anyway; never the service-role key.
"""

from __future__ import annotations

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

# The page runs its one script from this origin and calls only this origin.
CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'"


@require_GET
def passkeys_demo(request: HttpRequest) -> HttpResponse:
    if not settings.PASSKEY_DEMO_PAGE:
        raise Http404("not enabled")
    response = render(
        request,
        "accounts/passkeys_demo.html",
        {"anon_key": settings.SUPABASE_ANON_KEY, "auth_url": "/auth/v1", "rp_id": settings.WEBAUTHN_RP_ID},
    )
    response["Content-Security-Policy"] = CSP
    response["Cache-Control"] = "no-store"
    return response
