"""Import users from a Supabase `auth.users` export, streaming, idempotently.

Input: CSV with a header row (what `\\copy (select ...) to 'users.csv' csv
header` writes) or JSON lines (`select row_to_json(u) from auth.users u`),
optionally gzipped. Columns used: id, email, encrypted_password,
email_confirmed_at, created_at, updated_at, last_sign_in_at,
raw_app_meta_data, raw_user_meta_data, phone, banned_until, deleted_at,
is_anonymous; any others are ignored, all but `id` may be missing.

- UUIDs are kept, so every foreign reference to a user stays valid.
- bcrypt hashes are stored as `bcrypt$<hash>`: they verify with
  accounts.hashers.SupabaseBCryptPasswordHasher and are upgraded to argon2id
  on the first login (either surface). Users without one (OAuth-only,
  invited, anonymous) get an unusable password and are reported.
- Deleted rows are skipped; banned users (banned_until in the future) keep
  their ban (User.banned_until: no sign-in until then, as in Supabase, and it
  ends by itself); users without an address get `<id>@no-email.invalid`.
- Rows are read lazily and written in batches (one transaction each: an
  upsert of the users and of their mirror rows; then events.users_imported,
  whose receivers add their own rows, e.g. the missing referral codes), so
  memory stays flat whatever the file size; the importer exposes how many rows
  it ever held at once (`ImportReport.max_rows_held`).
- Idempotent: a row is inserted, updated (only the fields that differ from
  the file), or left alone; a re-run of the same file changes nothing. A
  password that was upgraded or changed here is never replaced by the
  export's bcrypt hash, and last_sign_in_at never moves backwards.
- Malformed rows are reported with their line number and skipped; they never
  stop the import.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from django.contrib.auth.hashers import make_password
from django.db import IntegrityError, transaction
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts import services
from accounts.events import users_imported
from accounts.gotrue.serializers import display_name_from
from accounts.models import NO_EMAIL_DOMAIN, Identity, PublicUser, User, normalize_email
from accounts.selectors import cache_invalidate, user_key

BCRYPT_HASH = re.compile(r"^\$2[abxy]\$\d{2}\$[./A-Za-z0-9]{53}$")
BCRYPT_PREFIX = "bcrypt$"
CSV_FIELD_LIMIT = 16 * 1024 * 1024  # metadata can be large; the default is 128 KiB
# What an upsert writes; a row whose values all match is left alone.
WRITTEN_FIELDS = (
    "email",
    "password",
    "display_name",
    "is_active",
    "date_joined",
    "updated_at",
    "last_login",
    "user_metadata",
    "app_metadata",
    "phone",
    "email_confirmed_at",
    "is_anonymous_user",
    "banned_until",
)
MIRRORED = ("email", "username", "display_name")


class MalformedRow(ValueError):
    pass


class NotAnExport(ValueError):
    """The file cannot be an auth.users export (no id column, not CSV/JSON lines)."""


@dataclass(frozen=True)
class RawRow:
    line: int
    data: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class UserRow:
    """One export row, parsed and checked."""

    line: int
    id: uuid.UUID
    email: str
    password: str | None  # "bcrypt$<hash>", or None: no password (OAuth-only, invited, anonymous)
    created_at: datetime | None
    updated_at: datetime | None
    last_sign_in_at: datetime | None
    email_confirmed_at: datetime | None
    app_metadata: dict
    user_metadata: dict
    phone: str | None
    banned_until: datetime | None  # only a ban still running at import time
    is_anonymous: bool
    has_email: bool


@dataclass
class ImportReport:
    rows_read: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> rows
    passwordless: int = 0
    banned: int = 0
    without_email: int = 0
    max_rows_held: int = 0  # rows read from the file and not yet written or skipped, at most
    batches: int = 0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.skipped.items()))
        skipped = f"skipped {self.skipped_total}" + (f" ({reasons})" if reasons else "")
        return (
            f"{self.rows_read} rows read: created {self.created}, updated {self.updated}, "
            f"unchanged {self.unchanged}, {skipped}; passwordless {self.passwordless} (unusable password), "
            f"banned {self.banned} (until their ban ends), without email {self.without_email}"
        )


Notice = Callable[[str, str], None]  # (kind: malformed | deleted | skipped | passwordless, message)


# --- reading ---------------------------------------------------------------------------------


class _CountingReader(io.RawIOBase):
    """Counts the bytes read from the file (for the progress bar)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        read = self._raw.readinto(buffer) or 0
        self.count += read
        return read


@dataclass
class ExportFile:
    rows: Iterator[RawRow]
    size: int
    bytes_read: Callable[[], int]
    format: str


def detect_format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    with _text(path) as (stream, _):
        head = stream.read(4096).lstrip()
    return "jsonl" if head.startswith("{") else "csv"


@contextmanager
def _text(path: Path) -> Iterator[tuple[io.TextIOBase, _CountingReader]]:
    with open(path, "rb", buffering=0) as raw:
        counter = _CountingReader(raw)
        binary: BinaryIO = io.BufferedReader(counter, buffer_size=1 << 16)
        if path.name.lower().endswith(".gz"):
            binary = gzip.GzipFile(fileobj=binary, mode="rb")  # type: ignore[assignment]
        # newline="": the csv module handles line ends (and newlines inside quoted fields).
        yield io.TextIOWrapper(binary, encoding="utf-8-sig", newline=""), counter


def _csv_rows(stream: io.TextIOBase) -> Iterator[RawRow]:
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    reader = csv.reader(stream)
    try:
        header = [name.strip().lower() for name in next(reader)]
    except StopIteration:
        return
    if "id" not in header:
        raise NotAnExport("no `id` column in the CSV header: is this an auth.users export with a header row?")
    previous = reader.line_num
    while True:
        line = previous + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            previous = reader.line_num
            yield RawRow(line=line, error=f"unreadable CSV ({exc})")
            continue
        previous = reader.line_num
        if not values:
            continue  # a blank line
        if len(values) != len(header):
            yield RawRow(line=line, error=f"expected {len(header)} columns, found {len(values)}")
            continue
        yield RawRow(line=line, data=dict(zip(header, values, strict=True)))


def _jsonl_rows(stream: io.TextIOBase) -> Iterator[RawRow]:
    for number, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except ValueError as exc:
            yield RawRow(line=number, error=f"not valid JSON ({exc.__class__.__name__}: {exc})")
            continue
        if not isinstance(data, dict):
            yield RawRow(line=number, error="not a JSON object")
            continue
        yield RawRow(line=number, data={str(key).lower(): value for key, value in data.items()})


@contextmanager
def open_export(path: Path | str, fmt: str | None = None) -> Iterator[ExportFile]:
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt not in ("csv", "jsonl"):
        raise NotAnExport(f"unknown format {fmt!r}: use csv or jsonl")
    with _text(path) as (stream, counter):
        rows = _csv_rows(stream) if fmt == "csv" else _jsonl_rows(stream)
        yield ExportFile(rows=rows, size=path.stat().st_size, bytes_read=lambda: counter.count, format=fmt)


# --- parsing one row ----------------------------------------------------------------------------------


def _text_value(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedRow(f"{name} is not text")
    return value.strip()


def _timestamp(data: dict[str, Any], name: str) -> datetime | None:
    raw = _text_value(data, name)
    if not raw:
        return None
    if raw.lower() == "infinity":
        return datetime.max.replace(tzinfo=UTC)
    try:
        parsed = parse_datetime(raw) or datetime.fromisoformat(raw)
    except ValueError:
        raise MalformedRow(f"{name} is not a timestamp: {raw[:40]!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _metadata(data: dict[str, Any], name: str) -> dict:
    value = data.get(name)
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise MalformedRow(f"{name} is not valid JSON") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedRow(f"{name} is not a JSON object")
    return value


def _boolean(data: dict[str, Any], name: str) -> bool:
    value = data.get(name)
    if isinstance(value, bool):
        return value
    text = "" if value is None else str(value).strip().lower()
    if text in ("", "f", "false", "0", "no"):
        return False
    if text in ("t", "true", "1", "yes"):
        return True
    raise MalformedRow(f"{name} is not a boolean: {text[:20]!r}")


def parse_row(raw: RawRow, *, now: datetime) -> UserRow | str:
    """A checked row, or the skip reason ("deleted"). Raises MalformedRow."""
    data = raw.data or {}
    try:
        user_id = uuid.UUID(_text_value(data, "id"))
    except ValueError:
        raise MalformedRow(f"id is not a UUID: {str(data.get('id'))[:40]!r}") from None
    if _timestamp(data, "deleted_at") is not None:
        return "deleted"
    email = _text_value(data, "email")
    if email and (len(email) > 254 or email.count("@") != 1 or any(char.isspace() for char in email)):
        raise MalformedRow(f"email is not an address: {email[:60]!r}")
    encrypted = _text_value(data, "encrypted_password")
    if encrypted and not BCRYPT_HASH.match(encrypted):
        raise MalformedRow("encrypted_password is not a bcrypt hash ($2a$10$...)")
    phone = _text_value(data, "phone") or None
    if phone and len(phone) > User._meta.get_field("phone").max_length:
        raise MalformedRow("phone is too long")
    banned_until = _timestamp(data, "banned_until")
    return UserRow(
        line=raw.line,
        id=user_id,
        email=normalize_email(email) if email else f"{user_id}@{NO_EMAIL_DOMAIN}",
        password=f"{BCRYPT_PREFIX}{encrypted}" if encrypted else None,
        created_at=_timestamp(data, "created_at"),
        updated_at=_timestamp(data, "updated_at"),
        last_sign_in_at=_timestamp(data, "last_sign_in_at"),
        email_confirmed_at=_timestamp(data, "email_confirmed_at"),
        app_metadata=_metadata(data, "raw_app_meta_data"),
        user_metadata=_metadata(data, "raw_user_meta_data"),
        phone=phone,
        banned_until=banned_until if banned_until is not None and banned_until > now else None,
        is_anonymous=_boolean(data, "is_anonymous"),
        has_email=bool(email),
    )


# --- writing ---------------------------------------------------------------------------------------------


def _replaceable(password: str) -> bool:
    """A stored password the export may overwrite: still the imported bcrypt
    hash, or none at all. An argon2 hash means the user has logged in (upgrade)
    or changed it here since: this service owns it now."""
    return password.startswith(BCRYPT_PREFIX) or password.startswith("!")


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


class SupabaseUserImporter:
    def __init__(
        self,
        *,
        batch_size: int = 1000,
        on_notice: Notice | None = None,
        on_batch: Callable[[ImportReport], None] | None = None,
        now: datetime | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.batch_size = batch_size
        self.on_notice = on_notice or (lambda kind, message: None)
        self.on_batch = on_batch or (lambda report: None)
        self.now = now or timezone.now()
        self.report = ImportReport()
        self._held = 0

    # -- bookkeeping --

    def _take(self) -> None:
        self._held += 1
        self.report.max_rows_held = max(self.report.max_rows_held, self._held)

    def _release(self, count: int = 1) -> None:
        self._held -= count

    def _skip(self, line: int, reason: str, detail: str = "") -> None:
        self.report.skipped[reason] += 1
        kind = reason if reason in ("malformed", "deleted") else "skipped"
        self.on_notice(kind, f"line {line}: {reason}" + (f": {detail}" if detail else ""))

    # -- the run --

    def run(self, rows: Iterator[RawRow]) -> ImportReport:
        batch: list[UserRow] = []
        for raw in rows:
            self._take()
            self.report.rows_read += 1
            if raw.error is not None:
                self._skip(raw.line, "malformed", raw.error)
                self._release()
                continue
            try:
                parsed = parse_row(raw, now=self.now)
            except MalformedRow as exc:
                self._skip(raw.line, "malformed", str(exc))
                self._release()
                continue
            if isinstance(parsed, str):
                self._skip(raw.line, parsed)
                self._release()
                continue
            batch.append(parsed)
            if len(batch) >= self.batch_size:
                self._flush(batch)
                batch = []
        if batch:
            self._flush(batch)
        return self.report

    def _flush(self, batch: list[UserRow]) -> None:
        rows = self._without_duplicates(batch)
        try:
            with transaction.atomic():
                self._write(rows)
        except IntegrityError:
            # A conflict the checks did not foresee (e.g. two users swapping
            # addresses, or a concurrent signup): retry row by row, so only the
            # conflicting rows are skipped.
            for row in rows:
                try:
                    with transaction.atomic():
                        self._write([row])
                except IntegrityError as exc:
                    self._skip(row.line, "conflict", f"{row.id}: {str(exc).splitlines()[0][:120]}")
        self._release(len(batch))
        self.report.batches += 1
        self.on_batch(self.report)

    def _without_duplicates(self, batch: list[UserRow]) -> list[UserRow]:
        """One row per id (the last one wins) and per address (the first wins)."""
        by_id: dict[uuid.UUID, UserRow] = {}
        for row in batch:
            if row.id in by_id:
                earlier = by_id.pop(row.id)
                self._skip(earlier.line, "duplicate_id", f"{row.id} again on line {row.line}")
            by_id[row.id] = row
        by_email: dict[str, UserRow] = {}
        kept = []
        for row in by_id.values():
            key = row.email.lower()
            if key in by_email:
                self._skip(row.line, "duplicate_email", f"{row.id}: {row.email} also on line {by_email[key].line}")
                continue
            by_email[key] = row
            kept.append(row)
        return kept

    def _write(self, rows: list[UserRow]) -> None:
        ids = [row.id for row in rows]
        existing = {user.pk: user for user in User.objects.filter(pk__in=ids)}
        # Addresses already used by a user who is not this row's.
        holders = dict(
            User.objects.annotate(address=Lower("email"))
            .filter(address__in=[row.email.lower() for row in rows])
            .values_list("address", "pk")
        )
        created: list[User] = []
        updated: list[User] = []
        outcomes: list[tuple[UserRow, str]] = []
        taken: list[tuple[UserRow, uuid.UUID]] = []
        password_replaced_ids: list[uuid.UUID] = []
        banned_ids: list[uuid.UUID] = []
        for row in rows:
            holder = holders.get(row.email.lower())
            if holder is not None and holder != row.id:
                taken.append((row, holder))
                continue
            current = existing.get(row.id)
            user = self._user(row, current)
            if current is None:
                created.append(user)
                outcomes.append((row, "created"))
            elif any(getattr(user, name) != getattr(current, name) for name in WRITTEN_FIELDS):
                updated.append(user)
                outcomes.append((row, "updated"))
                # Bulk writes send no model signals: end what the model would have.
                if user.password != current.password:
                    password_replaced_ids.append(user.pk)
                if user.is_banned(self.now) and not current.is_banned(self.now):
                    banned_ids.append(user.pk)
            else:
                outcomes.append((row, "unchanged"))
        changed = created + updated
        if changed:
            User.objects.bulk_create(
                changed,
                batch_size=len(changed),
                update_conflicts=True,
                unique_fields=["id"],
                update_fields=list(WRITTEN_FIELDS),
            )
            self._mirror(changed)
            # Bulk writes send no post_save: other apps add their rows here.
            users_imported.send(sender=User, user_ids=[user.pk for user in changed], now=self.now)
            cache_invalidate(user_key(user.pk) for user in updated)
            for user_id in password_replaced_ids:
                services.user_sessions_end(user_id=user_id, reason="password_change")
            # Bulk writes send no post_save: the ban ends the sessions here, as
            # the model's hook does for a ban saved any other way.
            for user_id in banned_ids:
                services.user_ban_enforce(user_id=user_id)
        # Counted only once the batch is written: a batch retried row by row
        # after a conflict is not counted twice.
        for row, holder in taken:
            self._skip(row.line, "email_taken", f"{row.id}: {row.email} belongs to user {holder}")
        for row, outcome in outcomes:
            setattr(self.report, outcome, getattr(self.report, outcome) + 1)
            self.report.passwordless += row.password is None
            self.report.banned += row.banned_until is not None
            self.report.without_email += not row.has_email
            if row.password is None and outcome == "created":
                self.on_notice("passwordless", f"line {row.line}: {row.id} {row.email}: no password (unusable)")

    def _user(self, row: UserRow, current: User | None) -> User:
        """The row as a User, merged with what is stored (None: a new user)."""
        if current is None:
            joined = row.created_at or self.now
            return User(
                id=row.id,
                email=row.email,
                username=None,
                password=row.password or make_password(None),
                display_name=display_name_from(row.user_metadata),
                is_active=True,
                banned_until=row.banned_until,
                is_staff=False,
                is_superuser=False,
                date_joined=joined,
                updated_at=row.updated_at or joined,
                last_login=row.last_sign_in_at,
                user_metadata=row.user_metadata,
                app_metadata=row.app_metadata,
                phone=row.phone,
                email_confirmed_at=row.email_confirmed_at,
                is_anonymous_user=row.is_anonymous,
            )
        password = current.password
        if row.password is not None and _replaceable(current.password):
            password = row.password
        return User(
            id=row.id,
            email=row.email,
            username=current.username,
            password=password,
            display_name=current.display_name or display_name_from(row.user_metadata),
            is_active=current.is_active,
            # The later of the export's ban and one an operator set here: an
            # import never lifts a ban.
            banned_until=_later(current.banned_until, row.banned_until),
            is_staff=current.is_staff,
            is_superuser=current.is_superuser,
            date_joined=row.created_at or current.date_joined,
            updated_at=_later(current.updated_at, row.updated_at),
            last_login=_later(current.last_login, row.last_sign_in_at),
            user_metadata=row.user_metadata,
            app_metadata=row.app_metadata,
            phone=row.phone,
            email_confirmed_at=row.email_confirmed_at,
            is_anonymous_user=row.is_anonymous,
        )

    def _mirror(self, users: list[User]) -> None:
        """The users-sync mirror rows (bulk writes fire no post_save): upserted,
        keeping the role an operator may have set."""
        PublicUser.objects.bulk_create(
            [
                PublicUser(
                    user_id=user.pk,
                    email=user.email,
                    username=user.username,
                    display_name=user.display_name,
                    created_at=user.date_joined,
                    updated_at=self.now,
                )
                for user in users
            ],
            batch_size=len(users),
            update_conflicts=True,
            unique_fields=["user"],
            update_fields=[*MIRRORED, "updated_at"],
        )


def import_supabase_users(
    path: Path | str,
    *,
    fmt: str | None = None,
    batch_size: int = 1000,
    on_notice: Notice | None = None,
    on_progress: Callable[[ImportReport, int, int], None] | None = None,
) -> ImportReport:
    """Import an export file; on_progress(report, bytes read, file size) after each batch."""
    with open_export(path, fmt) as export:
        on_batch = None
        if on_progress is not None:

            def on_batch(report: ImportReport) -> None:
                on_progress(report, export.bytes_read(), export.size)

        importer = SupabaseUserImporter(batch_size=batch_size, on_notice=on_notice, on_batch=on_batch)
        return importer.run(export.rows)


# --- auth.identities ------------------------------------------------------------------------------
#
# `import_supabase_users users.csv --identities identities.csv`: the export of
# auth.identities (same formats: `\copy (select * from auth.identities) to ... csv header`),
# imported after the users. Each row becomes an accounts.Identity (upsert on provider +
# provider_id: re-running updates); rows of users not imported are skipped with a reason.
# Old exports without a provider_id column carried the subject in `id`.


@dataclass
class IdentityImportReport:
    imported: int = 0
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        skipped = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
        return f"{self.imported} identities imported" + (f"; skipped: {skipped}" if skipped else "")


def _identity_row(data: dict[str, Any], now: datetime) -> Identity:
    provider = _text_value(data, "provider")
    subject = _text_value(data, "provider_id") or _text_value(data, "id")
    if not provider or not subject:
        raise MalformedRow("provider and provider_id are required")
    try:
        user_id = uuid.UUID(_text_value(data, "user_id"))
    except ValueError:
        raise MalformedRow("user_id is not a UUID") from None
    try:
        identity_id = uuid.UUID(_text_value(data, "id")) if data.get("provider_id") else uuid.uuid4()
    except ValueError:
        identity_id = uuid.uuid4()
    identity_data = _metadata(data, "identity_data")
    email = _text_value(data, "email") or str(identity_data.get("email") or "")
    return Identity(
        id=identity_id,
        user_id=user_id,
        provider=provider[:64],
        provider_id=subject[:255],
        identity_data=identity_data,
        email=email.lower()[:254],
        created_at=_timestamp(data, "created_at") or now,
        updated_at=_timestamp(data, "updated_at") or now,
        last_sign_in_at=_timestamp(data, "last_sign_in_at"),
    )


def _providers_merge(user_ids: set[uuid.UUID]) -> None:
    """app_metadata.providers lists every imported identity's provider (GoTrue keeps them in step)."""
    by_user: dict[uuid.UUID, list[str]] = {}
    for user_id, provider in (
        Identity.objects.filter(user_id__in=user_ids).order_by("created_at").values_list("user_id", "provider")
    ):
        by_user.setdefault(user_id, []).append(provider)
    for user in User.objects.filter(pk__in=list(by_user)):
        metadata = dict(user.app_metadata or {})
        providers = list(dict.fromkeys([*(metadata.get("providers") or []), *by_user[user.pk]]))
        if providers != metadata.get("providers"):
            metadata["providers"] = providers
            metadata.setdefault("provider", providers[0])
            User.objects.filter(pk=user.pk).update(app_metadata=metadata)
            cache_invalidate([user_key(user.pk)])


def import_supabase_identities(
    path: Path | str, *, fmt: str | None = None, batch_size: int = 1000
) -> IdentityImportReport:
    """Import an auth.identities export onto the users already imported."""
    report = IdentityImportReport()
    now = timezone.now()
    with open_export(path, fmt) as export:
        batch: list[Identity] = []
        for raw in export.rows:
            if raw.error:
                report.skipped["unreadable"] += 1
                continue
            try:
                batch.append(_identity_row(raw.data, now))
            except MalformedRow:
                report.skipped["malformed"] += 1
                continue
            if len(batch) >= batch_size:
                _identities_write(batch, report)
                batch = []
        if batch:
            _identities_write(batch, report)
    return report


def _identities_write(batch: list[Identity], report: IdentityImportReport) -> None:
    known = set(User.objects.filter(pk__in={row.user_id for row in batch}).values_list("pk", flat=True))
    rows = list({(row.provider, row.provider_id): row for row in batch if row.user_id in known}.values())
    report.skipped["user not imported"] += len([row for row in batch if row.user_id not in known])
    with transaction.atomic():
        Identity.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["provider", "provider_id"],
            update_fields=["identity_data", "email", "updated_at", "last_sign_in_at"],
        )
        _providers_merge({row.user_id for row in rows})
    report.imported += len(rows)
    if not report.skipped["user not imported"]:
        del report.skipped["user not imported"]
