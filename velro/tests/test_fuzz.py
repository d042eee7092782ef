"""Schema fuzzing: schemathesis against the live test server, from the committed openapi.yaml.

Every operation of both surfaces gets generated input (schemathesis's examples,
coverage and fuzzing phases; positive and negative data, bounded per operation)
with real credentials, and every response must:

- not be a 5xx;
- have a documented status code, the documented content type and a body that
  matches the documented schema;
- not leak a stack trace or a database driver's exception (custom check).

Destructive operations (logout, password change, PUT /auth/v1/user, API key
revocation) get a fresh user and session per generated case, so a case that
ends its session cannot starve the next one. Rate limits count per client IP
(127.0.0.1 for every case here), so they are off.

The number of generated cases is printed at the end of the module and written
to test-artifacts/schemathesis-cases.txt.

FUZZ_MAX_EXAMPLES (default 25) bounds the fuzzing phase per operation.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import requests
import schemathesis
from django.conf import settings
from django.contrib.auth.hashers import make_password
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from accounts.models import User
from accounts.tests.factories import DEFAULT_PASSWORD

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

BASE_DIR = Path(settings.BASE_DIR)
ARTIFACT = BASE_DIR / "test-artifacts" / "schemathesis-cases.txt"
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "25"))
# Off by default (CI replays the same examples); FUZZ_RANDOM=1 explores new ones.
DERANDOMIZE = os.environ.get("FUZZ_RANDOM", "") != "1"

schema = schemathesis.openapi.from_path(BASE_DIR / "openapi.yaml")

# Generated passwords almost never pass the password validators, and GoTrue's
# email is a plain string in the schema: half the generated sign-ups get a
# strong password (and, on GoTrue, a real address), so the success path (and
# whatever it writes to the database: user_metadata, the referral code) is
# fuzzed too. A valid value replaced by another valid one: a negative case
# stays negative.
SIGNUPS = {"POST /api/v1/auth/signup", "POST /auth/v1/signup"}
STRONG_PASSWORD = "violet tractor umbrella 42"


def _valid_string(value: object, max_length: int) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= max_length


def _valid_or_absent(body: dict, name: str, max_length: int) -> bool:
    return name not in body or _valid_string(body[name], max_length)


@schema.hook
def flatmap_body(context, body):
    label = context.operation.label
    if label not in SIGNUPS or not isinstance(body, dict):
        return st.just(body)
    if label == "POST /auth/v1/signup":
        # Optional fields here: filling in a missing one keeps a valid body valid.
        if not (_valid_or_absent(body, "password", 1024) and _valid_or_absent(body, "email", 1024)):
            return st.just(body)
        realistic = {**body, "email": f"fuzz-{uuid.uuid4().hex}@example.com", "password": STRONG_PASSWORD}
    else:
        if not _valid_string(body.get("password"), 128):
            return st.just(body)
        realistic = {**body, "password": STRONG_PASSWORD}
    return st.sampled_from([body, realistic])


# Ends the caller's session, or may change the caller's password.
DESTRUCTIVE = {
    ("POST", "/api/v1/auth/logout"),
    ("POST", "/api/v1/auth/password"),
    ("DELETE", "/api/v1/auth/api-keys/{key_id}"),
    ("POST", "/auth/v1/logout"),
    ("PUT", "/auth/v1/user"),
}

# What a response body must never contain, whatever the input.
LEAK_MARKERS = (
    "Traceback",
    'File "/',
    "django.db",
    "psycopg",
    "IntegrityError",
    "OperationalError",
    "ProgrammingError",
    "DataError",
    "InterfaceError",
    "DatabaseError",
)


@schemathesis.check
def no_stack_trace(ctx, response, case):
    """No response body leaks a traceback, a source path or a database exception."""
    text = response.text or ""
    leaked = [marker for marker in LEAK_MARKERS if marker in text]
    if leaked:
        raise AssertionError(f"response body leaks {leaked}: {text[:500]!r}")
    return None


@schemathesis.check
def content_type_probe_documented(ctx, response, case):
    """A 415 for a body in the wrong media type is an error the operation can
    return, so the schema must document it (schemathesis exempts these probes
    from status_code_conformance)."""
    if response.status_code == 415 and "415" not in case.operation.responses.status_codes:
        documented = ", ".join(map(str, case.operation.responses.status_codes))
        raise AssertionError(f"415 Unsupported Media Type is not documented (documented: {documented})")
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    no_stack_trace,
    content_type_probe_documented,
]

# --- counting ---------------------------------------------------------------------------

_lock = threading.Lock()
CASES: Counter[str] = Counter()
STATUSES: dict[str, Counter[int]] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_case_count(request):
    started = time.monotonic()
    yield
    total = sum(CASES.values())
    elapsed = time.monotonic() - started
    lines = [f"schemathesis cases run: {total} ({len(CASES)} operations, {elapsed:.1f}s)"]
    lines += [
        f"  {label}: {count}  statuses {dict(sorted(STATUSES.get(label, Counter()).items()))}"
        for label, count in sorted(CASES.items())
    ]
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text("\n".join(lines) + "\n")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + "\n".join(lines))


# --- credentials ------------------------------------------------------------------------

_PASSWORD_HASH: list[str] = []


def _password_hash() -> str:
    if not _PASSWORD_HASH:
        _PASSWORD_HASH.append(make_password(DEFAULT_PASSWORD))
    return _PASSWORD_HASH[0]


class Credentials:
    """Users and sessions made through the live server's own login endpoints."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = requests.Session()
        self._shared: dict[str, str] = {}

    def _user(self) -> User:
        return User.objects.create(
            email=f"fuzz-{uuid.uuid4().hex}@example.com", display_name="Fuzz", password=_password_hash()
        )

    def _login(self, surface: str, user: User) -> str:
        if surface == "gotrue":
            response = self.http.post(
                f"{self.base_url}/auth/v1/token",
                params={"grant_type": "password"},
                json={"email": user.email, "password": DEFAULT_PASSWORD},
                timeout=10,
            )
        else:
            response = self.http.post(
                f"{self.base_url}/api/v1/auth/login",
                json={"email": user.email, "password": DEFAULT_PASSWORD},
                timeout=10,
            )
        assert response.status_code == 200, response.text
        return response.json()["access_token"]

    def fresh(self, surface: str) -> str:
        return self._login(surface, self._user())

    def shared(self, surface: str) -> str:
        if surface not in self._shared:
            self._shared[surface] = self.fresh(surface)
        return self._shared[surface]


def _surface(case) -> str | None:
    security = case.operation.definition.raw.get("security") or []
    names = {name for requirement in security for name in requirement}
    if "gotrueBearer" in names:
        return "gotrue"
    if "bearerAuth" in names:
        return "native"
    return None


@pytest.fixture
def credentials(live_server, settings):
    settings.RATELIMIT_ENABLE = False
    creds = Credentials(live_server.url)
    yield creds
    creds.http.close()


# --- the fuzz ---------------------------------------------------------------------------


@schema.parametrize()
@hypothesis_settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=DERANDOMIZE,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_published_schema(case, credentials, live_server):
    headers = {}
    surface = _surface(case)
    # Cases generated to test missing or malformed credentials keep them as generated.
    if surface is not None and not case.operation.schema.is_security_param_negated(case):
        key = (case.operation.method.upper(), case.operation.path)
        token = credentials.fresh(surface) if key in DESTRUCTIVE else credentials.shared(surface)
        headers["Authorization"] = f"Bearer {token}"
    with _lock:
        CASES[case.operation.label] += 1
    response = case.call(base_url=live_server.url, headers=headers, timeout=30)
    with _lock:
        STATUSES.setdefault(case.operation.label, Counter())[response.status_code] += 1
    case.validate_response(response, checks=CHECKS, headers=headers)
