"""GoTrue's admin API (/auth/v1/admin/users...): what server code calls with the
service-role key (supabase-js `auth.admin.*`, supabase-py `auth.admin.*`).

Thin views on AdminGoTrueView (the service-role key only; the anon key or a
user's token: 403 not_admin): GoTrue's input -> accounts.flows (service +
audit) -> GoTrue's user object. Not in openapi.yaml (the native API's
contract); documented in the README's Supabase section.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import flows, selectors
from accounts.gotrue.errors import GoTrueError, validation_failed, weak_password_from
from accounts.gotrue.serializers import MetadataField, display_name_from, user_body
from accounts.gotrue.views import AdminGoTrueView, _email, _new_password_length, _valid
from accounts.models import User
from accounts.serializers import StrictCharField
from accounts.services import UNSET, PhoneTaken, UserIdTaken, UserNotFound, _Unset
from monitoring import audit
from monitoring.models import AuditEvent
from velro.errors import ApiError, Conflict

DEFAULT_PER_PAGE = 50  # GoTrue's
MAX_PER_PAGE = 1000  # GoTrue has no bound on the offset pages; this is its keyset pages' bound
MAX_PAGE = 2**31  # keeps the OFFSET far inside bigint
DUPLICATE_EMAIL = "A user with this email address has already been registered"
ROLE = "authenticated"

# Go's time.ParseDuration, which GoTrue applies to ban_duration: "24h", "1h30m", "90s", "-1.5h".
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_MAX_SECONDS = (2**63 - 1) / 1e9  # a Go Duration is int64 nanoseconds (about 292 years)
_E164 = re.compile(r"^[1-9][0-9]{1,14}$")


def go_duration(raw: str) -> timedelta:
    """Parse a Go duration string; ValueError when Go's parser would refuse it."""
    text = raw
    sign = -1 if text.startswith("-") else 1
    text = text[1:] if text[:1] in "+-" else text
    if text == "0":
        return timedelta(0)
    if not text:
        raise ValueError(f'time: invalid duration "{raw}"')
    seconds, position = 0.0, 0
    while position < len(text):
        match = _GO_PART.match(text, position)
        if match is None:
            raise ValueError(f'time: invalid duration "{raw}"')
        seconds += float(match.group(1)) * _GO_UNITS[match.group(2)]
        position = match.end()
    if seconds > _GO_MAX_SECONDS:
        raise ValueError(f'time: invalid duration "{raw}"')
    return timedelta(seconds=sign * seconds)


def _banned_until(raw: str | None) -> datetime | _Unset | None:
    """ban_duration -> banned_until: absent/"" leaves it (UNSET), "none" lifts
    the ban (None), a duration bans until now + duration (a negative one
    lifts it in effect, as in GoTrue)."""
    if not raw:
        return UNSET
    if raw == "none":
        return None
    try:
        return timezone.now() + go_duration(raw)
    except ValueError as exc:
        raise validation_failed(f"invalid format for ban duration: {exc}") from None


def _phone(raw: str | None) -> str | None:
    """GoTrue's validatePhone: without '+' and spaces, E.164 digits."""
    if not raw:
        return None
    phone = raw.strip().removeprefix("+").replace(" ", "")
    if not _E164.match(phone):
        raise validation_failed("Invalid phone number format (E.164 required)")
    return phone


def _admin_email(raw: str) -> str:
    if len(raw) > 254:  # the column's size (GoTrue: 255)
        raise validation_failed("An email address is too long")
    return _email(raw)


def _user_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        # GoTrue's loadUser: a 404 with validation_failed.
        raise GoTrueError(404, "validation_failed", "user_id must be an UUID") from None


def admin_user_body(user: User) -> dict[str, Any]:
    """GoTrue's user object, with the fields GoTrue adds when set (omitempty)."""
    body = user_body(user)
    if user.banned_until is not None:
        body["banned_until"] = _iso(user.banned_until)
    if user.deleted_at is not None:
        body["deleted_at"] = _iso(user.deleted_at)
    return body


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _service_errors(exc: ApiError) -> GoTrueError:
    """The services' admin errors in GoTrue's words."""
    if isinstance(exc, UserNotFound):
        return GoTrueError(404, "user_not_found", "User not found")
    if isinstance(exc, PhoneTaken):
        return GoTrueError(422, "phone_exists", "Phone number already registered by another user")
    if isinstance(exc, UserIdTaken):
        return GoTrueError(422, "validation_failed", "A user with this id already exists")
    if isinstance(exc, Conflict) and exc.code == "email_taken":
        return GoTrueError(422, "email_exists", DUPLICATE_EMAIL)
    raise exc


class AdminUserInput(serializers.Serializer):
    """GoTrue's AdminUserParams (unknown fields ignored, as GoTrue does)."""

    id = StrictCharField(required=False, allow_blank=True, max_length=64)
    aud = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=64)
    role = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=64)
    email = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=1024)
    phone = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=64)
    password = StrictCharField(
        required=False, allow_null=True, allow_blank=True, trim_whitespace=False, max_length=1024
    )
    password_hash = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=1024)
    email_confirm = serializers.BooleanField(required=False, allow_null=True)
    phone_confirm = serializers.BooleanField(required=False, allow_null=True)
    user_metadata = MetadataField(required=False, allow_null=True)
    app_metadata = MetadataField(required=False, allow_null=True)
    ban_duration = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=64)


class AdminUserDeleteInput(serializers.Serializer):
    should_soft_delete = serializers.BooleanField(required=False, default=False)


def _unsupported(data: dict[str, Any]) -> None:
    role = data.get("role")
    if role and role != ROLE:
        # The role claim is fixed (every Velro user is "authenticated").
        raise validation_failed(f"role {role!r} is not supported: every user's role is {ROLE!r}")
    if data.get("password_hash"):
        raise validation_failed("password_hash is not supported: give the password, or import the user")


def _password(data: dict[str, Any]) -> str | None:
    password = data.get("password")
    if password:
        _new_password_length(password)
    return password


class AdminUsersView(AdminGoTrueView):
    """GET /admin/users?page=&per_page= (list); POST /admin/users (create)."""

    @extend_schema(exclude=True)
    def get(self, request: Request) -> Response:
        page, per_page = _page(request)
        users, total = selectors.users_page(page=page, per_page=per_page)
        response = Response({"users": [admin_user_body(user) for user in users], "aud": _aud()})
        response["X-Total-Count"] = str(total)
        response["Link"] = _pagination_link(request, page=page, per_page=per_page, total=total)
        return response

    @extend_schema(exclude=True)
    def post(self, request: Request) -> Response:
        data = _valid(AdminUserInput, request)
        _unsupported(data)
        email = _admin_email(data["email"]) if data.get("email") else None
        phone = _phone(data.get("phone"))
        if email is None and phone is None:
            raise validation_failed("Cannot create a user without either an email or phone")
        user_id = None
        if data.get("id"):
            try:
                user_id = uuid.UUID(data["id"])
            except ValueError:
                raise validation_failed("ID must conform to the uuid v4 format") from None
            if user_id.int == 0:
                raise validation_failed("ID cannot be a nil uuid")
        banned_until = _banned_until(data.get("ban_duration"))
        metadata = data.get("user_metadata") or {}
        try:
            user = flows.admin_user_create(
                request=request,
                email=email,
                phone=phone,
                password=_password(data),
                email_confirm=bool(data.get("email_confirm")),
                user_metadata=metadata,
                app_metadata=data.get("app_metadata") or {},
                banned_until=None if banned_until is UNSET else banned_until,
                display_name=display_name_from(metadata),
                user_id=user_id,
            )
        except ValidationError as exc:
            raise weak_password_from(exc) from None
        except ApiError as exc:
            raise _service_errors(exc) from None
        return Response(admin_user_body(user))


class AdminUserView(AdminGoTrueView):
    """GET, PUT, DELETE /admin/users/{user_id}."""

    @extend_schema(exclude=True)
    def get(self, request: Request, user_id: str) -> Response:
        user = selectors.user_admin_get(user_id=_user_id(user_id))
        if user is None:
            raise GoTrueError(404, "user_not_found", "User not found")
        return Response(admin_user_body(user))

    @extend_schema(exclude=True)
    def put(self, request: Request, user_id: str) -> Response:
        target = _user_id(user_id)
        data = _valid(AdminUserInput, request)
        _unsupported(data)
        fields: dict[str, Any] = {"email_confirm": bool(data.get("email_confirm"))}
        if data.get("email"):
            fields["email"] = _admin_email(data["email"])
        if data.get("phone"):
            fields["phone"] = _phone(data["phone"])
        if data.get("password") is not None:
            # GoTrue checks the strength of whatever is given, "" included.
            password = data["password"]
            _new_password_length(password)
            fields["password"] = password
        for name in ("user_metadata", "app_metadata"):
            if data.get(name) is not None:
                fields[name] = data[name]
        banned_until = _banned_until(data.get("ban_duration"))
        if banned_until is not UNSET:
            fields["banned_until"] = banned_until
        try:
            user = flows.admin_user_update(request=request, user_id=target, **fields)
        except ValidationError as exc:
            raise weak_password_from(exc) from None
        except ApiError as exc:
            raise _service_errors(exc) from None
        return Response(admin_user_body(user))

    @extend_schema(exclude=True)
    def delete(self, request: Request, user_id: str) -> Response:
        target = _user_id(user_id)
        soft = False
        if request.data:  # GoTrue parses a body only when there is one
            soft = _valid(AdminUserDeleteInput, request)["should_soft_delete"]
        try:
            flows.admin_user_delete(request=request, user_id=target, soft=soft)
        except ApiError as exc:
            raise _service_errors(exc) from None
        return Response({})


def _number(request: Request, name: str, default: int, maximum: int | None) -> int:
    raw = request.query_params.get(name, "")
    if raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise validation_failed(f"Bad Pagination Parameters: invalid {name} {raw[:32]!r}")
    value = int(raw)
    if value < 1 or (maximum is not None and value > maximum):
        # GoTrue takes page=0 / per_page=0 (and then fails or divides by zero): refused here.
        raise validation_failed(f"Bad Pagination Parameters: {name} out of range")
    return value


def _page(request: Request) -> tuple[int, int]:
    """(page, per_page) of a list request, per_page bounded."""
    page = _number(request, "page", 1, MAX_PAGE)
    return page, min(_number(request, "per_page", DEFAULT_PER_PAGE, None), MAX_PER_PAGE)


class AdminAuditView(AdminGoTrueView):
    """GET /admin/audit?page=&per_page=&query=<author|action|type>:<value>: the
    audit trail in GoTrue's audit log entry shape, newest first."""

    @extend_schema(exclude=True)
    def get(self, request: Request) -> Response:
        page, per_page = _page(request)
        scope, value = "", ""
        query = request.query_params.get("query", "")
        if query:
            scope, _, value = query.partition(":")
            if scope not in audit.AUDIT_QUERY_SCOPES or not _:
                raise validation_failed(f"Invalid query scope: {query[:64]}")
        events, total = audit.audit_events_page(page=page, per_page=per_page, scope=scope, value=value)
        response = Response([_audit_entry(event) for event in events])
        response["X-Total-Count"] = str(total)
        response["Link"] = _pagination_link(request, page=page, per_page=per_page, total=total)
        return response


def _audit_entry(event: AuditEvent) -> dict[str, Any]:
    """GoTrue's AuditLogEntry: the event in `payload` (actor, action, log type, traits)."""
    actor = event.detail.get("actor") or (str(event.user_id) if event.user_id else "")
    traits = {key: value for key, value in event.detail.items() if key != "actor"}
    if event.identifier:
        traits["identifier"] = event.identifier
    return {
        "instance_id": "00000000-0000-0000-0000-000000000000",
        "id": str(event.pk),
        "payload": {
            "actor_id": actor,
            "actor_username": event.identifier,
            "action": event.kind,
            "log_type": event.kind.split("_", 1)[0],
            "traits": traits,
        },
        "created_at": _iso(event.created_at),
        "ip_address": event.ip or "",
    }


def _aud() -> str:
    return settings.GOTRUE_JWT_AUDIENCE


def _pagination_link(request: Request, *, page: int, per_page: int, total: int) -> str:
    """GoTrue's addPaginationHeaders: the request's own URL with `page` set,
    rel="next" while there is a next page, always rel="last"."""
    last = -(-total // per_page)  # ceil
    query = request.query_params.copy()
    if "per_page" in query:
        query["per_page"] = str(per_page)  # as bounded: the links give the pages this answer counted

    def url(target: int) -> str:
        query["page"] = str(target)
        return f"{request.path}?{urlencode(sorted(query.items()))}"

    parts = [f'<{url(page + 1)}>; rel="next"'] if last > page else []
    parts.append(f'<{url(last)}>; rel="last"')
    return ", ".join(parts)
