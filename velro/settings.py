"""Velro settings: one module, driven by environment variables, parsed strictly.

Every value comes from the environment (optionally from the file named by
DJANGO_ENV_FILE). A malformed value stops the process at start with a message
naming the variable, instead of a surprise at the first request. Outside
DEBUG there are no secret defaults: DJANGO_SECRET_KEY and DATABASE_URL must be
given. `.env.example` documents every variable read here.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import environ
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

if os.environ.get("DJANGO_ENV_FILE"):
    environ.Env.read_env(os.environ["DJANGO_ENV_FILE"], overwrite=False)

_env = environ.Env()
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise ImproperlyConfigured(f"{name} is required but not set")
        return default
    return value.strip()


def _bool(name: str, default: bool) -> bool:
    # django-environ reads any unknown word as False; a typo must not silently
    # switch a security setting, so only the listed spellings are accepted.
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true/false)")


def _number(name: str, default: float, *, kind: type = int, minimum: float = 0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r} must be >= {minimum}")
    return value


def _int(name: str, default: int, minimum: int = 0) -> int:
    return int(_number(name, default, kind=int, minimum=minimum))


def _float(name: str, default: float, minimum: float = 0) -> float:
    return float(_number(name, default, kind=float, minimum=minimum))


def _list(name: str, default: str) -> list[str]:
    return [item.strip() for item in _str(name, default).split(",") if item.strip()]


def _rate(name: str, default: str) -> tuple[int, int]:
    """'150/300' = 150 requests per 300 seconds."""
    raw = _str(name, default)
    try:
        limit, window = (int(part) for part in raw.split("/"))
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r}: expected '<count>/<seconds>', e.g. 150/300") from None
    if limit < 1 or window < 1:
        raise ImproperlyConfigured(f"{name}={raw!r}: count and seconds must be >= 1")
    return limit, window


def _url(name: str, default: str | None = None, schemes: tuple[str, ...] = ()) -> str:
    value = _str(name, default)
    if value and schemes and urlsplit(value).scheme not in schemes:
        raise ImproperlyConfigured(f"{name}={value!r}: scheme must be one of {', '.join(schemes)}")
    return value


# --- Core ------------------------------------------------------------------

DEBUG = _bool("DJANGO_DEBUG", False)

if DEBUG:
    SECRET_KEY = _str("DJANGO_SECRET_KEY", "insecure-debug-only-key-never-use-in-production-0123456789")
else:
    SECRET_KEY = _str("DJANGO_SECRET_KEY")
    if len(SECRET_KEY) < 32:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be at least 32 characters")

# Earlier secret keys, comma-separated, while a new DJANGO_SECRET_KEY rolls out:
# what was signed or encrypted under them (sessions of the admin, the signing
# keys' private halves) stays readable. Drop them once keys were re-made.
SECRET_KEY_FALLBACKS = _list("DJANGO_SECRET_KEY_FALLBACKS", "")

ALLOWED_HOSTS = _list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1")
# The largest request body accepted, in bytes (Django's default, 2.5 MiB): a
# larger one is answered 413 unread and its connection closed. It also bounds
# what velro/wsgi.py reads and discards of a body a view answered without
# reading, to keep a keep-alive connection in sync.
DATA_UPLOAD_MAX_MEMORY_SIZE = _int("REQUEST_BODY_MAX_BYTES", 2_621_440, minimum=1024)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI assets served from the package: no CDN
    "corsheaders",  # CORS for browser clients of /auth/v1/ (GOTRUE_CORS_ALLOWED_ORIGINS)
    "accounts",
    "referrals",
    "notifications",
    "monitoring",
]

# The FastLane* entries are Django's own middleware, stepping aside for the
# API and the probes (monitoring/middleware.py); the admin gets all of them.
MIDDLEWARE = [
    "monitoring.middleware.RequestContextMiddleware",
    "corsheaders.middleware.CorsMiddleware",  # answers preflights itself: before CommonMiddleware
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "monitoring.middleware.FastLaneSessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "monitoring.middleware.FastLaneCsrfViewMiddleware",
    "monitoring.middleware.FastLaneAuthenticationMiddleware",
    "monitoring.middleware.FastLaneMessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "velro.errors.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "velro.urls"
WSGI_APPLICATION = "velro.wsgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ----------------------------------------------------------------

if DEBUG:
    DATABASE_URL = _url("DATABASE_URL", f"sqlite:///{BASE_DIR / 'var' / 'velro.sqlite3'}")
else:
    DATABASE_URL = _url("DATABASE_URL")
try:
    _db = _env.db_url_config(DATABASE_URL)
except (ImproperlyConfigured, KeyError, ValueError) as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None

# Timeouts bound every query so a stalled database answers 503 instead of
# hanging a worker (the old service's 30 s logins). Milliseconds.
DB_CONNECT_TIMEOUT = _int("DB_CONNECT_TIMEOUT", 3, minimum=1)  # seconds
DB_STATEMENT_TIMEOUT_MS = _int("DB_STATEMENT_TIMEOUT_MS", 3000, minimum=1)
DB_LOCK_TIMEOUT_MS = _int("DB_LOCK_TIMEOUT_MS", 1000, minimum=1)
DB_IDLE_IN_TRANSACTION_TIMEOUT_MS = _int("DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", 10000, minimum=1)
# Django's native psycopg pool, one per process (see README: Connections).
DB_POOL = _bool("DB_POOL", True)
DB_POOL_MIN_SIZE = _int("DB_POOL_MIN_SIZE", 2, minimum=0)
DB_POOL_MAX_SIZE = _int("DB_POOL_MAX_SIZE", 4, minimum=1)
DB_POOL_TIMEOUT = _float("DB_POOL_TIMEOUT", 2.0)  # seconds a request may wait for a connection
# After a stalled or failed query, a web process fails its queries fast
# (503 + Retry-After) for this long instead of queueing behind the stall.
DB_BREAKER_COOLDOWN_SECONDS = _float("DB_BREAKER_COOLDOWN_SECONDS", 1.0)
# Without the pool: persistent connections, this many seconds.
DB_CONN_MAX_AGE = _int("DB_CONN_MAX_AGE", 600)
# Behind a transaction-pooling PgBouncer each transaction may run on another
# server connection, so nothing may rely on the session: PgBouncer refuses the
# libpq `options` startup parameter that carries the timeouts above, so they
# are set on the server instead (ALTER ROLE ... IN DATABASE ... SET, by
# `manage.py db_apply_timeouts`; `manage.py check --database default` warns
# while they are not), and server-side cursors (WITH HOLD, which .iterator()
# declares outside a transaction) and prepared statements are off.
DB_PGBOUNCER = _bool("DB_PGBOUNCER", False)
# The tighter budget of the auth transactions (signup, refresh, logout,
# password change), applied with SET LOCAL (velro.db.db_budget).
READINESS_TIMEOUT_MS = _int("READINESS_TIMEOUT_MS", 500, minimum=1)
READINESS_CACHE_SECONDS = _float("READINESS_CACHE_SECONDS", 2.0)
AUTH_STATEMENT_TIMEOUT_MS = _int("AUTH_STATEMENT_TIMEOUT_MS", 1500, minimum=1)
AUTH_LOCK_TIMEOUT_MS = _int("AUTH_LOCK_TIMEOUT_MS", 500, minimum=1)

if _db.get("ENGINE") == "django.db.backends.postgresql":
    # Django's backend, whose pool checks a connection before lending it with
    # a socket poll instead of a round trip (velro/pgbackend).
    _db["ENGINE"] = "velro.pgbackend"
    _db["CONN_MAX_AGE"] = 0 if DB_POOL else DB_CONN_MAX_AGE
    _db["CONN_HEALTH_CHECKS"] = True  # with the pool: a connection is checked before it is lent
    _db["OPTIONS"] = {"connect_timeout": DB_CONNECT_TIMEOUT}
    if DB_PGBOUNCER:
        _db["OPTIONS"]["prepare_threshold"] = None  # no server-side prepared statements (Django's default too)
        _db["DISABLE_SERVER_SIDE_CURSORS"] = True
    else:
        _db["OPTIONS"]["options"] = (
            f"-c statement_timeout={DB_STATEMENT_TIMEOUT_MS}"
            f" -c lock_timeout={DB_LOCK_TIMEOUT_MS}"
            f" -c idle_in_transaction_session_timeout={DB_IDLE_IN_TRANSACTION_TIMEOUT_MS}"
        )
    if DB_POOL:
        if DB_POOL_MIN_SIZE > DB_POOL_MAX_SIZE:
            raise ImproperlyConfigured("DB_POOL_MIN_SIZE must be <= DB_POOL_MAX_SIZE")
        _db["OPTIONS"]["pool"] = {
            "min_size": DB_POOL_MIN_SIZE,
            "max_size": DB_POOL_MAX_SIZE,
            "timeout": DB_POOL_TIMEOUT,
            "max_idle": 300,
            "name": "velro",
        }
elif _db.get("ENGINE") == "django.db.backends.sqlite3":
    (BASE_DIR / "var").mkdir(exist_ok=True)
    _db["OPTIONS"] = {"timeout": DB_CONNECT_TIMEOUT}
else:
    raise ImproperlyConfigured("DATABASE_URL must point at PostgreSQL (or SQLite for local runs)")

DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache (django-redis) ---------------------------------------------------

REDIS_URL = _url("REDIS_URL", "", schemes=("redis", "rediss", "unix"))
CACHE_TTL = _int("CACHE_TTL", 300, minimum=1)
# Short socket timeouts: a slow or dead Redis must cost a request milliseconds,
# not seconds. Seconds (floats allowed).
REDIS_SOCKET_CONNECT_TIMEOUT = _float("REDIS_SOCKET_CONNECT_TIMEOUT", 0.25)
REDIS_SOCKET_TIMEOUT = _float("REDIS_SOCKET_TIMEOUT", 0.25)
# After a cache error, skip the cache for this long before trying again.
CACHE_BREAKER_COOLDOWN_SECONDS = _float("CACHE_BREAKER_COOLDOWN_SECONDS", 5.0)

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "velro",
            "TIMEOUT": CACHE_TTL,
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "SOCKET_CONNECT_TIMEOUT": REDIS_SOCKET_CONNECT_TIMEOUT,
                "SOCKET_TIMEOUT": REDIS_SOCKET_TIMEOUT,
                "CONNECTION_POOL_KWARGS": {"max_connections": 50, "retry_on_timeout": False},
            },
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "KEY_PREFIX": "velro",
            "TIMEOUT": CACHE_TTL,
        }
    }

# --- Auth --------------------------------------------------------------------

AUTH_USER_MODEL = "accounts.User"
# The admin's sign-in: the API's rate limits and audit trail (accounts/backends.py).
AUTHENTICATION_BACKENDS = ["accounts.backends.ThrottledModelBackend"]

# argon2id at the OWASP minimum first; PBKDF2 (Django's old default) and
# bcrypt (Supabase exports) still verify and are upgraded on the next login.
PASSWORD_HASHERS = [
    "accounts.hashers.Argon2idPasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "accounts.hashers.SupabaseBCryptPasswordHasher",
    "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
]

PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 128
AUTH_PASSWORD_VALIDATORS = [
    {
        "NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator",
        "OPTIONS": {"user_attributes": ("email", "username", "display_name")},
    },
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": PASSWORD_MIN_LENGTH},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

JWT_SECRET = _str("JWT_SECRET", "")
if JWT_SECRET and len(JWT_SECRET.encode()) < 32:
    raise ImproperlyConfigured("JWT_SECRET must be at least 32 bytes (HS256 needs a 256-bit key)")
JWT_ISSUER = _str("JWT_ISSUER", "velro")
JWT_AUDIENCE = _str("JWT_AUDIENCE", "velro-api")
JWT_LEEWAY_SECONDS = _int("JWT_LEEWAY_SECONDS", 5)
ACCESS_TOKEN_TTL_SECONDS = _int("ACCESS_TOKEN_TTL_SECONDS", 900, minimum=30)
REFRESH_TOKEN_TTL_SECONDS = _int("REFRESH_TOKEN_TTL_SECONDS", 30 * 24 * 3600, minimum=60)
# Asymmetric signing keys (accounts/signing.py, README "Signing keys and JWKS"):
# every access token of both surfaces is signed by the one active key of
# auth_signing_keys, with its `kid` in the header; the public keys are served
# as a JWKS. New keys use this algorithm (ES256: small keys and signatures,
# fast; RS256 for consumers that only know RSA).
JWT_SIGNING_ALGORITHM = _str("JWT_SIGNING_ALGORITHM", "ES256")
if JWT_SIGNING_ALGORITHM not in ("ES256", "RS256"):
    raise ImproperlyConfigured("JWT_SIGNING_ALGORITHM must be ES256 or RS256")
# During the migration from HS256: tokens without a key id, signed HS256 with
# JWT_SECRET / SUPABASE_JWT_SECRET (or the keys derived from SECRET_KEY),
# still verify. Turn off once no HS256 token can still be unexpired.
JWT_LEGACY_HS256_VERIFY = _bool("JWT_LEGACY_HS256_VERIFY", True)
# Each process keeps the key set for this long: a revoked key stops verifying
# on every node within it (a key id it does not know makes it reload at once,
# at most once per second).
JWT_SIGNING_KEYS_CACHE_SECONDS = _float("JWT_SIGNING_KEYS_CACHE_SECONDS", 1.0, minimum=0.1)
# Cache-Control max-age of the JWKS documents (GoTrue's: 600 s). A standby
# key must be published this long before it is promoted.
JWKS_MAX_AGE_SECONDS = _int("JWKS_MAX_AGE_SECONDS", 600, minimum=0)
REFRESH_REUSE_GRACE_SECONDS = _int("REFRESH_REUSE_GRACE_SECONDS", 10)
# The revocation feed (accounts/revocations.py): every web process polls
# PostgreSQL for revocations this often, so a logout on a node that cannot
# reach Redis still ends the session everywhere. A process whose last good
# poll is older than the max lag trusts no cached "active" entry. 0 = off
# (one process only, e.g. tests that drive the feed by hand).
REVOCATION_FEED_INTERVAL_SECONDS = _float("REVOCATION_FEED_INTERVAL_SECONDS", 0.5)
REVOCATION_FEED_MAX_LAG_SECONDS = _float("REVOCATION_FEED_MAX_LAG_SECONDS", 1.0, minimum=0.1)
if REVOCATION_FEED_INTERVAL_SECONDS and REVOCATION_FEED_MAX_LAG_SECONDS <= REVOCATION_FEED_INTERVAL_SECONDS:
    raise ImproperlyConfigured("REVOCATION_FEED_MAX_LAG_SECONDS must exceed REVOCATION_FEED_INTERVAL_SECONDS")
# The L1 (accounts/selectors.py): each web process keeps the session and user
# snapshots it has verified for this many seconds, so a token-authenticated
# request skips the Redis round trip. Revocations still end a session within
# the feed's bound (an L1 hit is trusted only while the feed is fresh and says
# nothing about the session or its user; in the revoking process at once);
# other changes to a user (display name, role) reach other processes within
# this many seconds. Off (0) when the feed is off.
AUTH_L1_TTL_SECONDS = _float("AUTH_L1_TTL_SECONDS", 2.0)
# Every process of the machine drops its L1 at once when any of them revokes
# or changes a user: an 8-byte epoch in shared memory (tmpfs, per user). Other
# machines learn it from the feed.
AUTH_L1_EPOCH_PATH = _str("AUTH_L1_EPOCH_PATH", "") or os.path.join(
    "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir(),  # noqa: S108 - tmpfs, a file per user
    f"velro-l1-epoch-{os.getuid()}",
)

# Supabase Auth (GoTrue) compatibility surface under /auth/v1/ (accounts/gotrue/).
# Its access tokens are signed by the active asymmetric key like the native
# ones (JWT_SIGNING_ALGORITHM above; JWKS at /auth/v1/.well-known/jwks.json).
# HS256 tokens signed with SUPABASE_JWT_SECRET, the project's existing JWT
# secret (unset: a key derived from SECRET_KEY), still verify while
# JWT_LEGACY_HS256_VERIFY is on.
SUPABASE_JWT_SECRET = _str("SUPABASE_JWT_SECRET", "")
if SUPABASE_JWT_SECRET and len(SUPABASE_JWT_SECRET.encode()) < 32:
    raise ImproperlyConfigured("SUPABASE_JWT_SECRET must be at least 32 bytes (HS256 needs a 256-bit key)")
# When set, every /auth/v1/ request (but health) must carry it as `apikey`.
SUPABASE_ANON_KEY = _str("SUPABASE_ANON_KEY", "")
# The server-side key (Supabase's service_role key): accepted as `apikey`
# everywhere, and the only credential of the admin API (/auth/v1/admin/...).
# A legacy JWT-form key (HS256 with SUPABASE_JWT_SECRET, role service_role)
# is accepted too. Never ship it to a browser.
SUPABASE_SERVICE_ROLE_KEY = _str("SUPABASE_SERVICE_ROLE_KEY", "")
if SUPABASE_SERVICE_ROLE_KEY and len(SUPABASE_SERVICE_ROLE_KEY.encode()) < 32:
    raise ImproperlyConfigured("SUPABASE_SERVICE_ROLE_KEY must be at least 32 bytes (it unlocks the admin API)")
if SUPABASE_SERVICE_ROLE_KEY and SUPABASE_SERVICE_ROLE_KEY == SUPABASE_ANON_KEY:
    raise ImproperlyConfigured("SUPABASE_SERVICE_ROLE_KEY must differ from SUPABASE_ANON_KEY")
GOTRUE_JWT_AUDIENCE = _str("GOTRUE_JWT_AUDIENCE", "authenticated")


def _public_url_from_bind(bind: str) -> str:
    """http://host:port for gunicorn's BIND (a wildcard address -> localhost)."""
    if bind.startswith(("unix:", "fd://")):
        return "http://localhost:8000"
    host, _, port = bind.rpartition(":")
    if not host:
        host, port = bind, "8000"
    if host in {"", "0.0.0.0", "[::]", "::"}:  # noqa: S104 - parsing, not binding
        host = "localhost"
    return f"http://{host}:{port or '8000'}"


# The URL clients reach Velro at (what supabase-js is given as supabaseUrl).
# Unset: derived from BIND, as gunicorn and ./scripts/run.sh use it.
GOTRUE_SITE_URL = _url("GOTRUE_SITE_URL", "", schemes=("http", "https")).rstrip("/") or _public_url_from_bind(
    _str("BIND", "127.0.0.1:8000")
)
# The `iss` of GoTrue access tokens: GoTrue's own is <site>/auth/v1.
GOTRUE_ISSUER = _str("GOTRUE_ISSUER", "") or f"{GOTRUE_SITE_URL}/auth/v1"
# PUT /auth/v1/user with a new password needs `current_password` too (hosted
# Supabase's secure password change): otherwise a stolen 15-minute access
# token becomes a permanent takeover. false = the session alone is proof
# (self-hosted GoTrue's default), for apps that cannot send it.
GOTRUE_PASSWORD_CHANGE_REQUIRES_CURRENT_PASSWORD = _bool("GOTRUE_PASSWORD_CHANGE_REQUIRES_CURRENT_PASSWORD", True)
# One-time tokens (accounts.onetime): recovery, magic link / email code
# sign-in, confirmation, invite, email change, reauthentication. GoTrue's
# names and defaults: a 6-digit code valid for an hour; one email per address
# and purpose every GOTRUE_SMTP_MAX_FREQUENCY seconds (0 = no interval).
# false = confirmation-required mode: a signup gets no session but a confirmation
# email, and a password sign-in of an unconfirmed address answers email_not_confirmed.
GOTRUE_MAILER_AUTOCONFIRM = _bool("GOTRUE_MAILER_AUTOCONFIRM", True)
GOTRUE_MAILER_OTP_EXP = _int("GOTRUE_MAILER_OTP_EXP", 3600, minimum=60)
GOTRUE_MAILER_OTP_LENGTH = _int("GOTRUE_MAILER_OTP_LENGTH", 6, minimum=6)
if GOTRUE_MAILER_OTP_LENGTH > 10:
    raise ImproperlyConfigured("GOTRUE_MAILER_OTP_LENGTH must be between 6 and 10")
GOTRUE_SMTP_MAX_FREQUENCY = _int("GOTRUE_SMTP_MAX_FREQUENCY", 60)
# Wrong codes a token tolerates before it is dead (GoTrue has no such bound:
# its per-IP verify limit is the only one).
OTT_MAX_ATTEMPTS = _int("OTT_MAX_ATTEMPTS", 5, minimum=1)
# Second factors (accounts.totp, accounts.mfa). GoTrue's names and defaults:
# at most MFA_MAX_ENROLLED_FACTORS factors a user (verified or not); a
# challenge is good for MFA_CHALLENGE_EXPIRY_DURATION seconds; an unverified
# factor never challenged is dropped after MFA_FACTOR_EXPIRY_DURATION seconds.
MFA_MAX_ENROLLED_FACTORS = _int("MFA_MAX_ENROLLED_FACTORS", 10, minimum=1)
MFA_CHALLENGE_EXPIRY_DURATION = _int("MFA_CHALLENGE_EXPIRY_DURATION", 300, minimum=30)
MFA_FACTOR_EXPIRY_DURATION = _int("MFA_FACTOR_EXPIRY_DURATION", 300, minimum=60)
# Fernet keys (comma-separated) for TOTP secrets at rest: the first encrypts,
# all decrypt (rotation: put the new key first, keep the old ones until the
# secrets are re-encrypted). Empty: a key derived from DJANGO_SECRET_KEY (and
# its fallbacks), so a database dump alone does not reveal the secrets.
MFA_ENCRYPTION_KEYS = _list("MFA_ENCRYPTION_KEYS", "")
for _mfa_key in MFA_ENCRYPTION_KEYS:
    try:
        _decoded = base64.urlsafe_b64decode(_mfa_key.encode())
    except (binascii.Error, ValueError):
        _decoded = b""
    if len(_decoded) != 32:
        raise ImproperlyConfigured(
            "MFA_ENCRYPTION_KEYS: each key must be a Fernet key (32 url-safe base64 bytes: Fernet.generate_key())"
        )
# Redirect targets besides GOTRUE_SITE_URL, comma-separated globs as GoTrue's
# (`*` stops at `.` and `/`, `**` does not): anything else falls back to the site URL.
GOTRUE_URI_ALLOW_LIST = _list("GOTRUE_URI_ALLOW_LIST", "")
# How long a PKCE auth code from GET /verify may wait for /token?grant_type=pkce
# (GoTrue's GOTRUE_EXTERNAL_FLOW_STATE_EXPIRY_DURATION default: 300 s).
GOTRUE_FLOW_STATE_EXPIRY = _int("GOTRUE_FLOW_STATE_EXPIRY", 300, minimum=10)
# Sign in with a provider (accounts/external.py, /auth/v1/authorize and /callback):
# GoTrue's env names per built-in provider (GOTRUE_EXTERNAL_<NAME>_ENABLED, _CLIENT_ID,
# _SECRET, _REDIRECT_URI, _URL) plus OIDC_PROVIDERS, a JSON object for any OpenID
# Connect issuer: {"name": {"issuer", "client_id", "client_secret", "scopes"?,
# "redirect_uri"?}}. The redirect URI to register at the provider defaults to
# GOTRUE_SITE_URL + /auth/v1/callback. Checked here so a typo fails at start, not
# at a user's first sign-in.
EXTERNAL_CALLBACK_URL = f"{GOTRUE_SITE_URL}/auth/v1/callback"
# Seconds Velro waits for a provider (discovery, JWKS, token, GitHub's API).
EXTERNAL_HTTP_TIMEOUT = _float("EXTERNAL_HTTP_TIMEOUT", 10.0, minimum=0.5)
_EXTERNAL_BUILTINS = {
    # Google: OpenID Connect; GOTRUE_EXTERNAL_GOOGLE_URL may name another issuer.
    "google": {"kind": "oidc", "url": "https://accounts.google.com", "scopes": "openid email profile"},
    # GitHub: OAuth 2.0 with its REST API (not OIDC); _URL for GitHub Enterprise, and
    # _API_URL for its API base (https://<host>/api/v3 there).
    "github": {"kind": "github", "url": "https://github.com", "scopes": "read:user user:email"},
}


def _external_provider(name: str, defaults: dict) -> dict | None:
    prefix = f"GOTRUE_EXTERNAL_{name.upper()}_"
    if not _bool(prefix + "ENABLED", False):
        return None
    url = _url(prefix + "URL", defaults["url"], schemes=("http", "https")).rstrip("/")
    provider = {
        "kind": defaults["kind"],
        "client_id": _str(prefix + "CLIENT_ID"),
        "client_secret": _str(prefix + "SECRET"),
        "redirect_uri": _url(prefix + "REDIRECT_URI", "", schemes=("http", "https")) or EXTERNAL_CALLBACK_URL,
        "scopes": _str(prefix + "SCOPES", "").split() or defaults["scopes"].split(),
    }
    if defaults["kind"] == "oidc":
        provider["issuer"] = url
    else:
        api = "https://api.github.com" if url == "https://github.com" else f"{url}/api/v3"
        provider["url"] = url
        provider["api_url"] = _url(prefix + "API_URL", api, schemes=("http", "https")).rstrip("/")
    if not provider["client_id"] or not provider["client_secret"]:
        raise ImproperlyConfigured(f"{prefix}ENABLED=true needs {prefix}CLIENT_ID and {prefix}SECRET")
    return provider


def _oidc_providers(raw: str) -> dict[str, dict]:
    try:
        value = json.loads(raw or "{}")
    except ValueError as exc:
        raise ImproperlyConfigured(f"OIDC_PROVIDERS is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ImproperlyConfigured("OIDC_PROVIDERS must be a JSON object {name: {issuer, client_id, ...}}")
    providers = {}
    for name, item in value.items():
        if not re.fullmatch(r"[a-z0-9_-]{1,32}", name) or name in _EXTERNAL_BUILTINS:
            raise ImproperlyConfigured(f"OIDC_PROVIDERS: bad or reserved provider name {name!r}")
        missing = [key for key in ("issuer", "client_id", "client_secret") if not (item or {}).get(key)]
        if missing:
            raise ImproperlyConfigured(f"OIDC_PROVIDERS[{name!r}] lacks {', '.join(missing)}")
        if urlsplit(item["issuer"]).scheme not in ("http", "https"):
            raise ImproperlyConfigured(f"OIDC_PROVIDERS[{name!r}].issuer must be an http(s) URL")
        scopes = item.get("scopes") or "openid email profile"
        providers[name] = {
            "kind": "oidc",
            "issuer": item["issuer"].rstrip("/"),
            "client_id": item["client_id"],
            "client_secret": item["client_secret"],
            "scopes": scopes.split() if isinstance(scopes, str) else list(scopes),
            "redirect_uri": item.get("redirect_uri") or EXTERNAL_CALLBACK_URL,
        }
    return providers


EXTERNAL_PROVIDERS: dict[str, dict] = {
    name: provider
    for name, provider in (
        *((name, _external_provider(name, defaults)) for name, defaults in _EXTERNAL_BUILTINS.items()),
        *_oidc_providers(_str("OIDC_PROVIDERS", "")).items(),
    )
    if provider is not None
}


# Passkeys (WebAuthn, accounts.passkeys). The relying party: its id (a
# domain, never an IP: browsers refuse those), its display name, and the
# origins whose pages may run the ceremonies (scheme://host[:port], each on the
# RP id or a subdomain of it). Defaults fit local development: the host of
# GOTRUE_SITE_URL, or `localhost` when that is an IP address (with
# http://localhost:<site port> as the origin). Checked strictly at start-up:
# outside DEBUG an origin must be https unless its host is localhost (a secure
# context browsers allow); an origin outside the RP id is refused.
_site = urlsplit(GOTRUE_SITE_URL)
_site_host = _site.hostname or "localhost"
try:
    ipaddress.ip_address(_site_host)
    _site_is_ip = True
except ValueError:
    _site_is_ip = False
WEBAUTHN_RP_ID = _str("WEBAUTHN_RP_ID", "") or ("localhost" if _site_is_ip else _site_host)
WEBAUTHN_RP_NAME = _str("WEBAUTHN_RP_NAME", "Velro")
WEBAUTHN_ORIGINS = _list(
    "WEBAUTHN_ORIGINS",
    f"{_site.scheme}://localhost:{_site.port or 8000}" if _site_is_ip else GOTRUE_SITE_URL,
)


def _webauthn_origins_check(rp_id: str, origins: list[str], debug: bool) -> None:
    if not rp_id or "/" in rp_id or ":" in rp_id:
        raise ImproperlyConfigured(f"WEBAUTHN_RP_ID={rp_id!r}: a domain name (e.g. example.com)")
    if not origins:
        raise ImproperlyConfigured("WEBAUTHN_ORIGINS: at least one origin")
    for origin in origins:
        parts = urlsplit(origin)
        host = parts.hostname or ""
        if parts.scheme not in ("https", "http") or parts.path not in ("", "/") or parts.query or not host:
            raise ImproperlyConfigured(f"WEBAUTHN_ORIGINS: {origin!r} is not an origin (scheme://host[:port])")
        if host != rp_id and not host.endswith(f".{rp_id}"):
            raise ImproperlyConfigured(f"WEBAUTHN_ORIGINS: {origin!r} is outside WEBAUTHN_RP_ID={rp_id!r}")
        if parts.scheme == "http" and host != "localhost" and not debug:
            raise ImproperlyConfigured(f"WEBAUTHN_ORIGINS: {origin!r} must be https (http only for localhost)")


_webauthn_origins_check(WEBAUTHN_RP_ID, WEBAUTHN_ORIGINS, DEBUG)
# Seconds a ceremony's challenge lives (GoTrue: GOTRUE_WEBAUTHN_CHALLENGE_EXPIRY_DURATION).
WEBAUTHN_CHALLENGE_EXPIRY = _int("WEBAUTHN_CHALLENGE_EXPIRY", 300, minimum=30)
# Passkeys one user may hold (GoTrue: GOTRUE_PASSKEY_MAX_PASSKEYS_PER_USER).
PASSKEY_MAX_PER_USER = _int("PASSKEY_MAX_PER_USER", 10, minimum=1)
# GET /passkeys/demo/: a page that runs every passkey call against /auth/v1
# in a browser (the browser tests use it). It carries SUPABASE_ANON_KEY, the
# public key any browser client holds anyway. On in DEBUG, off by default in production.
PASSKEY_DEMO_PAGE = _bool("PASSKEY_DEMO_PAGE", DEBUG)
# Browser origins allowed to call /auth/v1/ (CORS), "*" = any, as Supabase's
# gateway answers. Bearer tokens only, no cookies: no ambient credentials to abuse.
GOTRUE_CORS_ALLOWED_ORIGINS = _list("GOTRUE_CORS_ALLOWED_ORIGINS", "*")
# ... applied by django-cors-headers, to /auth/v1/ only, with the headers GoTrue
# answers and supabase-js sends (apikey and x-client-info; X-Supabase-Api-Version
# picks the error shape and must be readable by browser code, as must Retry-After).
CORS_URLS_REGEX = r"^/auth/v1/"
CORS_ALLOW_ALL_ORIGINS = "*" in GOTRUE_CORS_ALLOWED_ORIGINS
CORS_ALLOWED_ORIGINS = [origin for origin in GOTRUE_CORS_ALLOWED_ORIGINS if origin != "*"]
CORS_ALLOW_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# What supabase-js sends, plus "*" for headers apps add through its
# `global.headers` (no credentialed requests here, so the wildcard applies;
# `authorization` must still be named: "*" never covers it).
CORS_ALLOW_HEADERS = [
    "accept",
    "authorization",
    "apikey",
    "content-type",
    "x-client-info",
    "x-supabase-api-version",
    "x-request-id",
    "*",
]
CORS_EXPOSE_HEADERS = ["X-Supabase-Api-Version", "Retry-After", "X-Request-ID"]
CORS_PREFLIGHT_MAX_AGE = 86400

# Rate limits (ASVS 6.3.1), "<count>/<seconds>". Near GoTrue's defaults.
RATELIMIT_ENABLE = _bool("RATELIMIT_ENABLE", True)
RATELIMIT_LOGIN_IP = _rate("RATELIMIT_LOGIN_IP", "150/300")
# Failed logins per account from one IP, and per account from anywhere. Both
# windows are short so a victim can be locked out for minutes, not longer.
RATELIMIT_LOGIN_FAILURES_ACCOUNT_IP = _rate("RATELIMIT_LOGIN_FAILURES_ACCOUNT_IP", "5/300")
RATELIMIT_LOGIN_FAILURES_ACCOUNT = _rate("RATELIMIT_LOGIN_FAILURES_ACCOUNT", "50/900")
RATELIMIT_SIGNUP_IP = _rate("RATELIMIT_SIGNUP_IP", "30/3600")
RATELIMIT_REFRESH_IP = _rate("RATELIMIT_REFRESH_IP", "150/300")
RATELIMIT_PASSWORD_USER = _rate("RATELIMIT_PASSWORD_USER", "10/900")
RATELIMIT_API_KEYS_USER = _rate("RATELIMIT_API_KEYS_USER", "30/3600")
# Emails with a code or link asked for from one address (recover, otp, magiclink, resend),
# and code/link verifications from one address (GoTrue's 30 per 5 minutes for /verify).
RATELIMIT_OTT_SEND_IP = _rate("RATELIMIT_OTT_SEND_IP", "30/3600")
RATELIMIT_OTT_VERIFY_IP = _rate("RATELIMIT_OTT_VERIFY_IP", "30/300")
# TOTP codes tried against one factor (GoTrue: MFA_RATE_LIMIT_CHALLENGE_AND_VERIFY, 15 a minute):
# 6 digits and a 3-step window make a guess 3 in a million; this caps the guesses per factor, wherever they come from.
RATELIMIT_MFA_VERIFY_FACTOR = _rate("RATELIMIT_MFA_VERIFY_FACTOR", "15/60")
# Recovery codes tried per user (accounts/recovery_flows.py): a code has ~2^49 values,
# so this caps noise and a stolen session's guessing, not a feasible search.
RATELIMIT_RECOVERY_CODE_USER = _rate("RATELIMIT_RECOVERY_CODE_USER", "10/900")

# Admission control of password hashing (velro/admission.py). argon2id is
# CPU-bound (~35 ms of one core): more hashes in flight than cores only queue.
# Per process: HASH_CONCURRENCY hashes at once (default: the cores this
# process may run on; set it under a CPU quota, which the default cannot see); at most
# HASH_QUEUE_MAX requests wait for a slot, each at most HASH_QUEUE_TIMEOUT_MS
# (a full queue drains within it: 4 hashes of ~100 ms when 5 workers share 2
# cores); a login whose client has gone, or that has waited more than
# HASH_MAX_REQUEST_AGE_MS since its last byte arrived (gunicorn's queue
# included; 0 = no limit), is not hashed. Everything shed answers 503
# `overloaded` + Retry-After at once.
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
HASH_CONCURRENCY = _int("HASH_CONCURRENCY", _CPUS, minimum=1)
# And across every process of the machine (container): HASH_MACHINE_SLOTS
# hashes at once (default: its cores; 0 = no machine-wide bound), one lock
# file per slot in HASH_SLOTS_DIR (tmpfs; per user). A process may hash on
# every core while the others are idle, and 5 workers never run 5 memory-hard
# hashes on 2 cores. The wait for a machine slot counts in HASH_QUEUE_TIMEOUT_MS.
HASH_MACHINE_SLOTS = _int("HASH_MACHINE_SLOTS", _CPUS, minimum=0)
HASH_SLOTS_DIR = _str("HASH_SLOTS_DIR", "") or os.path.join(
    "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir(),  # noqa: S108 - tmpfs, a directory per user
    f"velro-hash-{os.getuid()}",
)
HASH_QUEUE_MAX = _int("HASH_QUEUE_MAX", 4)
# The hash itself runs on a thread this much nicer than the request threads
# (velro/hashpool.py): under overload the kernel serves sheds, /me and probes
# before hashes. 0 = on the request's thread, at its priority.
HASH_NICE = _int("HASH_NICE", 5, minimum=0)
HASH_QUEUE_TIMEOUT_MS = _int("HASH_QUEUE_TIMEOUT_MS", 500)
HASH_MAX_REQUEST_AGE_MS = _int("HASH_MAX_REQUEST_AGE_MS", 2000)

# How many reverse proxies (load balancer, nginx) sit in front of gunicorn.
# X-Forwarded-For is read only this many hops from the right; 0 = ignore it.
TRUSTED_PROXY_COUNT = _int("TRUSTED_PROXY_COUNT", 0)

# last_login is written off the request path, coalesced, every N seconds.
TOUCH_FLUSH_INTERVAL_SECONDS = _float("TOUCH_FLUSH_INTERVAL_SECONDS", 2.0)

# --- Email -------------------------------------------------------------------

EMAIL_BACKEND = _str("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = _str("EMAIL_HOST", "127.0.0.1")
EMAIL_PORT = _int("EMAIL_PORT", 1025, minimum=1)
EMAIL_HOST_USER = _str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = _str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = _bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = _int("EMAIL_TIMEOUT", 10, minimum=1)
DEFAULT_FROM_EMAIL = _str("DEFAULT_FROM_EMAIL", "Velro <no-reply@velro.local>")

# --- Celery ------------------------------------------------------------------

# Defaults to REDIS_URL; in DEBUG with no Redis, to the file-system broker.
CELERY_BROKER_URL = _url(
    "CELERY_BROKER_URL",
    REDIS_URL or ("filesystem://" if DEBUG else None),
    schemes=("redis", "rediss", "amqp", "amqps", "pyamqp", "filesystem"),
)
CELERY_BROKER_IS_RABBITMQ = urlsplit(CELERY_BROKER_URL).scheme in {"amqp", "amqps", "pyamqp"}
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = _int("CELERY_TASK_SOFT_TIME_LIMIT", 30, minimum=1)
CELERY_TASK_TIME_LIMIT = _int("CELERY_TASK_TIME_LIMIT", 60, minimum=1)
# Redelivery of an unacked (acks_late) task happens after the visibility
# timeout; it must exceed the hard time limit or a slow task runs twice.
CELERY_VISIBILITY_TIMEOUT = _int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=1)
if CELERY_VISIBILITY_TIMEOUT <= CELERY_TASK_TIME_LIMIT:
    raise ImproperlyConfigured("CELERY_VISIBILITY_TIMEOUT must exceed CELERY_TASK_TIME_LIMIT")
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    # Publishing from a request must fail fast when the broker is down.
    "socket_connect_timeout": 0.5,
    "socket_timeout": 2,
    # No reconnect loop when publishing (kombu would sleep 2 s first): the
    # enqueue breaker and the sweeper handle a dead broker.
    "max_retries": 0,
}
if CELERY_BROKER_IS_RABBITMQ:
    # RabbitMQ (README: "Durability settings for RabbitMQ"). py-amqp takes the
    # transport options as its connection arguments; the Redis ones above mean
    # nothing to it, so this is its own set.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Publisher confirms: a publish returns once RabbitMQ has the message
        # (in the quorum queue's replicated log); a refused one raises, so the
        # enqueue path counts it and the sweeper resends, instead of it
        # vanishing after a "successful" basic.publish.
        "confirm_publish": True,
        # Fail fast from a request: connect (TCP + AMQP handshake) in 0.5 s, and
        # a socket that stops moving (a black hole, or RabbitMQ blocking
        # publishers on a memory/disk alarm while the confirm is awaited) raises
        # within 1 s instead of hanging the request (kombu then closes the
        # channel and the connection, 1 s each at most: ~3 s in all, once per
        # outage thanks to the enqueue breaker).
        "connect_timeout": 0.5,
        "read_timeout": 1,
        "write_timeout": 1,
        "max_retries": 0,
    }
    # Durable, replicated queues: the default queue is declared as a quorum
    # queue (always durable; messages fsynced and replicated before the confirm).
    CELERY_TASK_DEFAULT_QUEUE_TYPE = "quorum"
    # Quorum queues have no global QoS: Celery turns it off when it sees one
    # (prefetch stays concurrency x 1).
    CELERY_WORKER_DETECT_QUORUM_QUEUES = True
    # Retries with a countdown go through RabbitMQ's native delayed delivery
    # (dead-lettering quorum queues) instead of sitting unacked in a worker,
    # where they would block it and count against consumer_timeout. It needs a
    # topic exchange in front of the queue.
    CELERY_TASK_DEFAULT_EXCHANGE_TYPE = "topic"
    CELERY_BROKER_NATIVE_DELAYED_DELIVERY_QUEUE_TYPE = "quorum"
    # Persistent messages (Celery's default, stated): survive a broker restart.
    CELERY_TASK_DEFAULT_DELIVERY_MODE = "persistent"
    # No visibility timeout here: RabbitMQ redelivers an unacked (acks_late)
    # message when its consumer's channel closes (a dead worker). Its
    # consumer_timeout (default 30 min) closes the channel of a consumer holding
    # a delivery longer than that: keep it above CELERY_TASK_TIME_LIMIT.
CELERY_BROKER_CONNECTION_TIMEOUT = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# On a lost broker connection, let running tasks finish (their ack is lost and
# the message redelivered, which the tasks' idempotence absorbs) instead of
# terminating them: a terminated send_email could be cut mid-SMTP.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# After a failed enqueue, skip the broker for this long (the work is in
# PostgreSQL; the sweeper sends it).
CELERY_ENQUEUE_COOLDOWN_SECONDS = _float("CELERY_ENQUEUE_COOLDOWN_SECONDS", 5.0)
REFERRAL_SWEEP_MIN_AGE_SECONDS = _int("REFERRAL_SWEEP_MIN_AGE_SECONDS", 30)
REFERRAL_SWEEP_INTERVAL_SECONDS = _int("REFERRAL_SWEEP_INTERVAL_SECONDS", 60, minimum=1)
EMAIL_MAX_ATTEMPTS = _int("EMAIL_MAX_ATTEMPTS", 10, minimum=1)
REFERRAL_SYNC_TIME = _str("REFERRAL_SYNC_TIME", "03:30")  # UTC, HH:MM
try:
    _sync_hour, _sync_minute = (int(part) for part in REFERRAL_SYNC_TIME.split(":"))
    if not (0 <= _sync_hour < 24 and 0 <= _sync_minute < 60):
        raise ValueError
except ValueError:
    raise ImproperlyConfigured(f"REFERRAL_SYNC_TIME={REFERRAL_SYNC_TIME!r} is not HH:MM (UTC)") from None
CELERY_BEAT_SCHEDULE = {
    "referrals-sweep": {"task": "referrals.sweep", "schedule": float(REFERRAL_SWEEP_INTERVAL_SECONDS)},
    "accounts-prune-revocations": {"task": "accounts.prune_revocations", "schedule": 3600.0},
    "accounts-prune-one-time-tokens": {"task": "accounts.prune_one_time_tokens", "schedule": 3600.0},
    "referrals-nightly-sync": {
        "task": "referrals.nightly_sync",
        "schedule": crontab(hour=_sync_hour, minute=_sync_minute),
    },
    "notifications-sweep": {"task": "notifications.sweep", "schedule": float(REFERRAL_SWEEP_INTERVAL_SECONDS)},
    "accounts-repair-mirror": {
        "task": "accounts.repair_mirror",
        "schedule": crontab(hour=_sync_hour, minute=_sync_minute),
    },
}
if CELERY_BROKER_URL.startswith("filesystem://"):
    # Embedded fallback for local runs with no Redis: messages are files.
    _broker_dir = BASE_DIR / "var" / "celery-broker"
    for _sub in ("out", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS.update(
        {
            "data_folder_in": str(_broker_dir / "out"),
            "data_folder_out": str(_broker_dir / "out"),
            "data_folder_processed": str(_broker_dir / "processed"),
            # kombu's default is "control" relative to the working directory:
            # a stray folder in the checkout.
            "control_folder": str(_broker_dir / "control"),
        }
    )

# --- DRF -----------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.AccessTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["velro.errors.SafeJSONParser"],
    "EXCEPTION_HANDLER": "velro.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Velro auth API",
    "DESCRIPTION": "Sign-up, login, token refresh, logout, API keys and referrals; and a GoTrue-compatible "
    'surface under /auth/v1/. Errors: {"error", "detail"} (+ "fields").',
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- I18N, static ----------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Also serve straight from the apps' static folders (admin, Swagger UI from
# drf-spectacular-sidecar): works before collectstatic has run (tests, dev).
WHITENOISE_USE_FINDERS = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- Security ------------------------------------------------------------------

# W003 ("CsrfViewMiddleware not in MIDDLEWARE") is a false positive: our
# FastLaneCsrfViewMiddleware is that class, stepping aside only for the JSON
# API (bearer tokens, no cookies); the admin gets the full CSRF check.
SILENCED_SYSTEM_CHECKS = ["security.W003"]
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SECURE_SSL_REDIRECT = _bool("DJANGO_SECURE_SSL_REDIRECT", False)
# Production behind TLS (README: Production security): HSTS for a year outside
# DEBUG (browsers ignore it over plain HTTP, so local runs are unaffected);
# behind a TLS-terminating proxy, trust its X-Forwarded-Proto to know a request
# was HTTPS (only when that proxy always sets it).
SECURE_HSTS_SECONDS = _int("DJANGO_SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = _bool("DJANGO_SECURE_HSTS_PRELOAD", False)
if _bool("DJANGO_SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = _bool("DJANGO_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
CSRF_TRUSTED_ORIGINS = _list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

# --- Monitoring ------------------------------------------------------------------

VELRO_VERSION = "0.1.0"
GIT_COMMIT = _str("GIT_COMMIT", "")  # set at build time; else read from the checkout
BUILD_TIME = _str("BUILD_TIME", "")
# /metrics: a bearer token, and/or client networks allowed without one.
METRICS_TOKEN = _str("METRICS_TOKEN", "")
try:
    METRICS_ALLOWED_NETWORKS = [
        ipaddress.ip_network(item) for item in _list("METRICS_ALLOWED_NETWORKS", "127.0.0.1/32,::1/128")
    ]
except ValueError as exc:
    raise ImproperlyConfigured(f"METRICS_ALLOWED_NETWORKS: {exc}") from None
AUTH_TIMING_ENABLED = _bool("AUTH_TIMING_ENABLED", False)
# SLO thresholds for the staff page /admin/slo/; Prometheus alerts on the same
# values (monitoring/prometheus/alerts.yml: a test keeps the two equal).
SLO_P95_WARNING_MS = _float("SLO_P95_WARNING_MS", 500.0)
SLO_P95_CRITICAL_MS = _float("SLO_P95_CRITICAL_MS", 1000.0)
SLO_SUCCESS_RATE_MIN = _float("SLO_SUCCESS_RATE_MIN", 0.99)
if not 0 <= SLO_SUCCESS_RATE_MIN <= 1:
    raise ImproperlyConfigured("SLO_SUCCESS_RATE_MIN must be between 0 and 1")
# Each serving process logs its DB pool statistics every N seconds (0 = never).
POOL_REPORT_SECONDS = _float("POOL_REPORT_SECONDS", 60.0)
# Audit events are written in bulk every N seconds (0 = synchronously).
AUDIT_FLUSH_SECONDS = _float("AUDIT_FLUSH_SECONDS", 1.0)

# --- Logging -----------------------------------------------------------------------

LOG_LEVEL = _str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(f"LOG_LEVEL={LOG_LEVEL!r} is not a log level")

LOG_FORMAT = _str("LOG_FORMAT", "json")
if LOG_FORMAT not in {"json", "plain"}:
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r}: use json or plain")
# One access line per request, written by monitoring.middleware (stdout, in
# batches: monitoring/accesslog.py) instead of gunicorn's access logger, which
# cost ~15% of a token-authenticated GET's throughput.
ACCESS_LOG = _bool("ACCESS_LOG", True)
# Access lines are written in batches this often (0 = each at once); see monitoring/accesslog.py.
ACCESS_LOG_FLUSH_SECONDS = _float("ACCESS_LOG_FLUSH_SECONDS", 0.2)

# Structured JSON logs; every line carries the request id of the request
# that produced it ("-" outside a request).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "monitoring.logging.RequestIdFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["request_id"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
    },
}
