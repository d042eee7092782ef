"""`manage.py import_supabase_users`: a Supabase auth.users export, generated
here (bcrypt at cost 10 with the $2a$ prefix, as GoTrue writes it), in both
formats GoTrue's Postgres produces: `\\copy ... csv header` and row_to_json
lines.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bcrypt
import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import touch
from accounts.importer import SupabaseUserImporter, import_supabase_users, open_export
from accounts.models import PublicUser, Session, User
from accounts.selectors import has_mfa_factors
from accounts.tests.factories import UserFactory
from referrals.models import ReferralCode

pytestmark = pytest.mark.django_db(transaction=False)

ALICE_PASSWORD = "maple syrup harbour 81"
BOB_PASSWORD = "granite kettle lantern 27"
CAROL_PASSWORD = "copper meadow violin 64"
IDS = {name: uuid.uuid4() for name in ("alice", "bob", "deleted", "banned", "oauth", "anonymous", "unbanned")}
CREATED = datetime(2023, 4, 5, 6, 7, 8, 123456, tzinfo=UTC)
SIGNED_IN = datetime(2024, 11, 2, 3, 4, 5, 654321, tzinfo=UTC)
# A subset of auth.users' columns, in its order, with some the importer ignores.
COLUMNS = [
    "instance_id",
    "id",
    "aud",
    "role",
    "email",
    "encrypted_password",
    "email_confirmed_at",
    "invited_at",
    "confirmation_token",
    "last_sign_in_at",
    "raw_app_meta_data",
    "raw_user_meta_data",
    "is_super_admin",
    "created_at",
    "updated_at",
    "phone",
    "phone_confirmed_at",
    "confirmed_at",
    "banned_until",
    "is_sso_user",
    "deleted_at",
    "is_anonymous",
]
IMPORTED = ("alice", "bob", "banned", "oauth", "anonymous", "unbanned")
LOGIN = "/api/v1/auth/login"
GOTRUE_LOGIN = "/auth/v1/token?grant_type=password"


def supabase_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(10, prefix=b"2a")).decode()


@pytest.fixture(scope="module")
def hashes() -> dict[str, str]:
    return {
        name: supabase_hash(password)
        for name, password in [("alice", ALICE_PASSWORD), ("bob", BOB_PASSWORD), ("carol", CAROL_PASSWORD)]
    }


def row(name: str, **values) -> dict:
    base = {
        "instance_id": "00000000-0000-0000-0000-000000000000",
        "id": IDS.get(name, name),
        "aud": "authenticated",
        "role": "authenticated",
        "email": f"{name}@example.com",
        "encrypted_password": "",
        "email_confirmed_at": CREATED + timedelta(minutes=5),
        "invited_at": None,
        "confirmation_token": "",
        "last_sign_in_at": SIGNED_IN,
        "raw_app_meta_data": {"provider": "email", "providers": ["email"]},
        "raw_user_meta_data": {},
        "is_super_admin": None,
        "created_at": CREATED,
        "updated_at": CREATED + timedelta(days=1),
        "phone": None,
        "phone_confirmed_at": None,
        "confirmed_at": CREATED + timedelta(minutes=5),
        "banned_until": None,
        "is_sso_user": False,
        "deleted_at": None,
        "is_anonymous": False,
    }
    base.update(values)
    return base


def export_rows(hashes: dict[str, str]) -> list[dict]:
    now = datetime.now(UTC)
    return [
        row(
            "alice",
            encrypted_password=hashes["alice"],
            raw_user_meta_data={"full_name": "Alice Liddell", "plan": "pro", "tags": ["a", "b"]},
            phone="15550001111",
        ),
        row("bob", encrypted_password=hashes["bob"], last_sign_in_at=None, email_confirmed_at=None, confirmed_at=None),
        row("deleted", encrypted_password=hashes["carol"], deleted_at=now - timedelta(days=3)),
        row("banned", encrypted_password=hashes["carol"], banned_until=now + timedelta(days=365 * 100)),
        row(
            "oauth",
            raw_app_meta_data={"provider": "google", "providers": ["google"]},
            raw_user_meta_data={"name": "Oscar Auth", "avatar_url": "https://example.com/o.png"},
        ),
        row(
            "anonymous",
            email=None,
            raw_app_meta_data={"provider": "anonymous", "providers": ["anonymous"]},
            is_anonymous=True,
            last_sign_in_at=None,
            email_confirmed_at=None,
            confirmed_at=None,
        ),
        row("unbanned", encrypted_password=hashes["carol"], banned_until=now - timedelta(days=1)),
        row("malformed-id", id="not-a-uuid"),
    ]


def _pg_csv(value: object) -> str:
    """A value as PostgreSQL's CSV COPY writes it (NULL is an empty field)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _pg_json(value: object) -> object:
    """A value as row_to_json writes it."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def write_csv(path: Path, rows: list[dict], *, broken_line: bool = True) -> Path:
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for item in rows:
            writer.writerow([_pg_csv(item[name]) for name in COLUMNS])
        if broken_line:
            out.write("this,line,is,not,an,auth,users,row\n")
    return path


def write_jsonl(path: Path, rows: list[dict], *, broken_line: bool = True) -> Path:
    with open(path, "w") as out:
        for item in rows:
            out.write(json.dumps({name: _pg_json(item[name]) for name in COLUMNS}) + "\n")
        if broken_line:
            out.write('{"id": "truncated\n')
    return path


@pytest.fixture(params=["csv", "jsonl"])
def export(request, tmp_path, hashes) -> Path:
    rows = export_rows(hashes)
    if request.param == "csv":
        return write_csv(tmp_path / "users.csv", rows)
    return write_jsonl(tmp_path / "users.jsonl", rows)


def run(path: Path, **options) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("import_supabase_users", str(path), stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def login(api: APIClient, email: str, password: str):
    return api.post(LOGIN, {"email": email, "password": password}, format="json")


# --- what is imported ------------------------------------------------------------------------------


def test_import_keeps_ids_metadata_timestamps_and_bcrypt_hashes(export, hashes):
    run(export)
    alice = User.objects.get(pk=IDS["alice"])
    assert alice.email == "alice@example.com"
    assert alice.password == f"bcrypt${hashes['alice']}"
    assert alice.user_metadata == {"full_name": "Alice Liddell", "plan": "pro", "tags": ["a", "b"]}
    assert alice.app_metadata == {"provider": "email", "providers": ["email"]}
    assert alice.display_name == "Alice Liddell"
    assert alice.phone == "15550001111"
    assert alice.date_joined == CREATED
    assert alice.updated_at == CREATED + timedelta(days=1)
    assert alice.last_login == SIGNED_IN
    assert alice.email_confirmed_at == CREATED + timedelta(minutes=5)
    assert alice.is_active and not alice.is_staff and not alice.is_anonymous_user
    bob = User.objects.get(pk=IDS["bob"])
    assert bob.last_login is None and bob.email_confirmed_at is None
    assert bob.user_metadata == {} and bob.display_name == ""


def test_deleted_rows_are_skipped_and_banned_users_keep_a_ban_that_ends_by_itself(export):
    run(export)
    assert not User.objects.filter(pk=IDS["deleted"]).exists()
    banned = User.objects.get(pk=IDS["banned"])
    assert banned.is_active is True and banned.is_banned()
    assert banned.banned_until.year > timezone.now().year + 90  # Supabase's "ban forever"
    unbanned = User.objects.get(pk=IDS["unbanned"])
    assert unbanned.is_active is True and unbanned.banned_until is None  # the ban is over
    # The right password is answered user_banned, as GoTrue would.
    response = login(APIClient(), banned.email, CAROL_PASSWORD)
    assert response.status_code == 403 and response.json()["error"] == "user_banned"


def test_passwordless_and_anonymous_users_get_an_unusable_password_and_are_reported(export):
    out, _ = run(export)
    oauth = User.objects.get(pk=IDS["oauth"])
    assert not oauth.has_usable_password()
    assert oauth.app_metadata == {"provider": "google", "providers": ["google"]}
    assert oauth.display_name == "Oscar Auth"
    anonymous = User.objects.get(pk=IDS["anonymous"])
    assert anonymous.is_anonymous_user is True
    assert anonymous.email == f"{IDS['anonymous']}@no-email.invalid"
    assert not anonymous.has_usable_password()
    assert "passwordless line" in out and str(IDS["oauth"]) in out and str(IDS["anonymous"]) in out
    assert "passwordless 2 (unusable password)" in out
    assert "without email 1" in out


def test_mirror_rows_and_referral_codes_exist_for_every_imported_user(export):
    run(export)
    imported = [IDS[name] for name in IMPORTED]
    mirrors = {mirror.pk: mirror for mirror in PublicUser.objects.filter(pk__in=imported)}
    assert set(mirrors) == set(imported)
    assert mirrors[IDS["alice"]].email == "alice@example.com"
    assert mirrors[IDS["alice"]].display_name == "Alice Liddell"
    assert mirrors[IDS["alice"]].role == "viewer"
    codes = ReferralCode.objects.filter(user_id__in=imported)
    assert codes.count() == len(imported)
    assert len({code.code for code in codes}) == len(imported)


def test_the_summary_counts_and_the_malformed_rows_are_reported_with_their_line(export):
    out, err = run(export)
    assert "9 rows read: created 6, updated 0, unchanged 0, skipped 3 (deleted 1, malformed 2)" in out
    assert "banned 1 (until their ban ends)" in out
    malformed = [line for line in err.splitlines() if line.startswith("malformed")]
    assert len(malformed) == 2
    # The invalid id is the 8th data row; the broken line is the last one. CSV has a header line.
    first_data_line = 2 if export.suffix == ".csv" else 1
    assert malformed[0].startswith(f"malformed line {first_data_line + 7}: malformed: id is not a UUID")
    assert malformed[1].startswith(f"malformed line {first_data_line + 8}: malformed: ")


def test_no_welcome_emails_or_referral_intents_for_imported_users(export):
    from notifications.models import EmailNotification
    from referrals.models import ReferralIntent

    run(export)
    imported = [IDS[name] for name in IMPORTED]
    assert not EmailNotification.objects.filter(recipient_id__in=imported).exists()
    assert not ReferralIntent.objects.filter(referred_id__in=imported).exists()


# --- logging in with the old password -------------------------------------------------------------------


def test_imported_user_logs_in_on_the_native_api_and_the_hash_becomes_argon2id(export):
    run(export)
    api = APIClient()
    assert login(api, "alice@example.com", "not alice's password").status_code == 401
    assert User.objects.get(pk=IDS["alice"]).password.startswith("bcrypt$")  # a failure upgrades nothing
    response = login(api, "ALICE@example.com", ALICE_PASSWORD)
    assert response.status_code == 200, response.content
    assert response.json()["user"]["id"] == str(IDS["alice"])
    alice = User.objects.get(pk=IDS["alice"])
    assert alice.password.startswith("argon2$argon2id$")
    assert login(api, "alice@example.com", ALICE_PASSWORD).status_code == 200  # and again, on argon2id


def test_imported_user_logs_in_on_the_gotrue_surface_and_the_hash_becomes_argon2id(export, settings):
    settings.SUPABASE_JWT_SECRET = "supabase-project-jwt-secret-" + "i" * 20
    run(export)
    api = APIClient()
    response = api.post(GOTRUE_LOGIN, {"email": "alice@example.com", "password": ALICE_PASSWORD}, format="json")
    assert response.status_code == 200, response.content
    assert User.objects.get(pk=IDS["alice"]).password.startswith("argon2$argon2id$")
    alice = response.json()
    assert alice["user"]["id"] == str(IDS["alice"])
    assert alice["user"]["user_metadata"]["plan"] == "pro"
    assert alice["user"]["created_at"].startswith("2023-04-05T06:07:08.123456")
    assert alice["user"]["email_confirmed_at"] is not None
    me = api.get("/auth/v1/user", HTTP_AUTHORIZATION=f"Bearer {alice['access_token']}").json()
    assert me["phone"] == "15550001111"
    assert me["app_metadata"] == {"provider": "email", "providers": ["email"]}


def test_an_imported_user_whose_address_was_never_confirmed_gets_email_not_confirmed_as_on_supabase(export):
    run(export)
    api = APIClient()
    wrong = api.post(GOTRUE_LOGIN, {"email": "bob@example.com", "password": "not bob's password"}, format="json")
    assert wrong.status_code == 400 and wrong.json()["error_code"] == "invalid_credentials"  # tells nothing
    right = api.post(GOTRUE_LOGIN, {"email": "bob@example.com", "password": BOB_PASSWORD}, format="json")
    assert right.status_code == 400 and right.json()["error_code"] == "email_not_confirmed", right.content
    native = login(api, "bob@example.com", BOB_PASSWORD)
    assert native.status_code == 400 and native.json()["error"] == "email_not_confirmed", native.content
    assert not Session.objects.filter(user_id=IDS["bob"]).exists()


def test_banned_and_passwordless_users_cannot_log_in(export):
    run(export)
    api = APIClient()
    assert login(api, "banned@example.com", "not carol's password").status_code == 401
    assert login(api, "unbanned@example.com", CAROL_PASSWORD).status_code == 200
    assert login(api, "oauth@example.com", "").status_code in (400, 401)
    assert login(api, "oauth@example.com", "anything at all").status_code == 401


def test_the_gotrue_surface_shows_anonymous_users_without_an_address(export, settings):
    from accounts.gotrue.serializers import user_body

    run(export)
    body = user_body(User.objects.get(pk=IDS["anonymous"]))
    assert body["email"] == "" and body["identities"] == [] and body["is_anonymous"] is True
    assert body["app_metadata"]["provider"] == "anonymous"


# --- idempotency --------------------------------------------------------------------------------------------


def snapshot() -> dict:
    return {
        "users": sorted(User.objects.values_list("pk", "password", "updated_at", "last_login", "user_metadata")),
        "mirrors": sorted(PublicUser.objects.values_list("pk", "email", "display_name", "updated_at")),
        "codes": sorted(ReferralCode.objects.values_list("user_id", "code")),
    }


def test_reimporting_the_same_file_changes_nothing(export):
    run(export)
    before = snapshot()
    out, _ = run(export)
    assert "created 0, updated 0, unchanged 6, skipped 3 (deleted 1, malformed 2)" in out
    assert snapshot() == before
    assert "passwordless line" not in out  # reported when created, not on every re-run


def test_reimport_after_a_login_keeps_the_upgraded_hash_and_the_newer_last_login(export):
    run(export)
    api = APIClient()
    assert login(api, "alice@example.com", ALICE_PASSWORD).status_code == 200
    touch.flush()
    upgraded = User.objects.get(pk=IDS["alice"])
    assert upgraded.password.startswith("argon2$argon2id$")
    out, _ = run(export)
    assert "created 0, updated 0, unchanged 6" in out
    alice = User.objects.get(pk=IDS["alice"])
    assert alice.password == upgraded.password
    assert alice.last_login == upgraded.last_login > SIGNED_IN
    assert login(api, "alice@example.com", ALICE_PASSWORD).status_code == 200


def test_reimport_of_changed_rows_updates_them_and_a_new_ban_ends_the_sessions(tmp_path, hashes, settings):
    settings.SUPABASE_JWT_SECRET = "supabase-project-jwt-secret-" + "u" * 20
    rows = export_rows(hashes)
    rows[1]["email_confirmed_at"] = rows[1]["confirmed_at"] = CREATED  # bob may sign in
    run(write_csv(tmp_path / "first.csv", rows, broken_line=False))
    api = APIClient()
    bob = api.post(GOTRUE_LOGIN, {"email": "bob@example.com", "password": BOB_PASSWORD}, format="json").json()
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {bob['access_token']}"}
    assert api.get("/auth/v1/user", **bearer).status_code == 200  # now cached
    rows[0]["raw_user_meta_data"] = {"full_name": "Alice Liddell", "plan": "team"}
    rows[1]["banned_until"] = datetime.now(UTC) + timedelta(days=30)
    out, _ = run(write_csv(tmp_path / "second.csv", rows, broken_line=False))
    assert "created 0, updated 2, unchanged 4" in out
    assert User.objects.get(pk=IDS["alice"]).user_metadata == {"full_name": "Alice Liddell", "plan": "team"}
    assert User.objects.get(pk=IDS["bob"]).is_banned()
    assert api.get("/auth/v1/user", **bearer).status_code == 403
    assert (
        api.post(
            "/auth/v1/token?grant_type=refresh_token", {"refresh_token": bob["refresh_token"]}, format="json"
        ).json()["error_code"]
        == "user_banned"
    )
    assert User.objects.filter(pk__in=[IDS[name] for name in IMPORTED]).count() == 6
    # The first export again (no ban in it): an import never lifts a ban.
    rows[1]["banned_until"] = None
    run(write_csv(tmp_path / "third.csv", rows, broken_line=False))
    assert User.objects.get(pk=IDS["bob"]).is_banned()


def test_an_address_already_taken_by_another_user_is_skipped_and_reported(tmp_path, hashes):
    existing = UserFactory(email="alice@example.com")
    out, _ = run(write_csv(tmp_path / "users.csv", export_rows(hashes), broken_line=False))
    assert "email_taken 1" in out
    assert f"belongs to user {existing.pk}" in out
    assert not User.objects.filter(pk=IDS["alice"]).exists()
    assert User.objects.get(email="alice@example.com").pk == existing.pk


def test_duplicate_ids_and_addresses_in_one_file_are_skipped_not_fatal(tmp_path, hashes):
    rows = export_rows(hashes)[:2]
    rows.append(row("alice", encrypted_password=hashes["alice"], raw_user_meta_data={"second": True}))
    rows.append(row("carol", id=uuid.uuid4(), email="BOB@example.com"))
    out, _ = run(write_jsonl(tmp_path / "users.jsonl", rows, broken_line=False))
    assert "duplicate_email 1" in out and "duplicate_id 1" in out
    assert User.objects.get(pk=IDS["alice"]).user_metadata == {"second": True}  # the last row wins
    assert User.objects.filter(email__lower="bob@example.com").count() == 1


# --- formats and the command -------------------------------------------------------------------------------------


def test_gzipped_and_extensionless_exports_are_read(tmp_path, hashes):
    rows = export_rows(hashes)
    plain = write_csv(tmp_path / "users.csv", rows, broken_line=False)
    gz = tmp_path / "users.csv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    assert "created 6" in run(gz)[0]
    bare = write_jsonl(tmp_path / "export", rows, broken_line=False)
    with open_export(bare) as export:
        assert export.format == "jsonl"
    assert "unchanged 6" in run(bare)[0]


def test_a_file_that_is_not_an_export_is_a_command_error(tmp_path):
    path = tmp_path / "people.csv"
    path.write_text("name,email\nAda,ada@example.com\n")
    with pytest.raises(CommandError, match="no `id` column"):
        run(path)
    with pytest.raises(CommandError, match="no such file"):
        run(tmp_path / "missing.csv")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_progress_bar_is_drawn_on_a_terminal_only(tmp_path, hashes):
    path = write_csv(tmp_path / "users.csv", export_rows(hashes), broken_line=False)
    terminal = FakeTerminal()
    call_command("import_supabase_users", str(path), "--batch-size", "2", stdout=terminal, stderr=io.StringIO())
    shown = terminal.getvalue()
    assert "\r[" in shown and "100%" in shown
    # The bar line is cleared before the summary is printed.
    assert shown.rindex("\r\033[K") < shown.index("import_supabase_users: 8 rows read: created 6")
    out, _ = run(path)
    assert "\r" not in out


# --- streaming ----------------------------------------------------------------------------------------------------


def write_large_csv(path: Path, count: int) -> Path:
    """`count` rows with well-formed but fake hashes (real bcrypt would take minutes)."""
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for number in range(count):
            item = row(
                "bulk",
                id=uuid.uuid4(),
                email=f"bulk{number}-{path.stem}@example.com",
                encrypted_password=f"$2a$10${number:053d}",
                raw_user_meta_data={"n": number, "note": "x" * 100},
            )
            writer.writerow([_pg_csv(item[name]) for name in COLUMNS])
    return path


def test_a_large_export_is_streamed_holding_at_most_one_batch(tmp_path):
    path = write_large_csv(tmp_path / "large.csv", 20_000)
    with open_export(path) as export:
        report = SupabaseUserImporter(batch_size=500).run(export.rows)
    assert report.rows_read == 20_000
    assert report.created == 20_000
    assert report.batches == 40
    # Rows read from the file but not yet written: never more than one batch.
    assert report.max_rows_held == 500
    assert User.objects.filter(email__endswith="-large@example.com").count() == 20_000
    assert ReferralCode.objects.filter(user__email__endswith="-large@example.com").count() == 20_000


def test_peak_memory_does_not_grow_with_the_file(tmp_path):
    small = write_large_csv(tmp_path / "small.csv", 1_000)
    large = write_large_csv(tmp_path / "big.csv", 8_000)
    import_supabase_users(write_large_csv(tmp_path / "warm.csv", 500), batch_size=500)  # imports, caches

    def peak(path: Path) -> int:
        tracemalloc.start()
        try:
            report = import_supabase_users(path, batch_size=500)
            return tracemalloc.get_traced_memory()[1], report
        finally:
            tracemalloc.stop()

    small_peak, small_report = peak(small)
    large_peak, large_report = peak(large)
    assert (small_report.created, large_report.created) == (1_000, 8_000)
    # Eight times the rows: holding the extra 7,000 (about 600 bytes of text
    # each, several times that as dicts and model instances) would add well
    # over 4 MB. Streamed, the peak is the same to within a batch's noise.
    assert large_peak - small_peak < 1_000_000, (small_peak, large_peak)


# --- re-imports and what operators did meanwhile ---------------------------------------------------------


@pytest.mark.parametrize("export", ["jsonl"], indirect=True)
def test_re_importing_does_not_reactivate_a_user_an_operator_deactivated(export):
    run(export)
    alice = User.objects.get(pk=IDS["alice"])
    alice.is_active = False
    alice.save()
    run(export)
    assert User.objects.get(pk=IDS["alice"]).is_active is False


@pytest.mark.parametrize("export", ["jsonl"], indirect=True)
def test_a_ban_arriving_with_a_re_import_ends_the_users_sessions(export, hashes, tmp_path):
    run(export)
    api = APIClient()
    tokens = login(api, "alice@example.com", ALICE_PASSWORD).json()
    me = APIClient()
    me.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access_token']}")
    assert me.get("/api/v1/auth/me").status_code == 200  # warm
    rows = export_rows(hashes)
    for item in rows:
        if item["id"] == IDS["alice"]:
            item["banned_until"] = datetime.now(UTC) + timedelta(days=30)
    run(write_jsonl(tmp_path / "banned.jsonl", rows))
    assert me.get("/api/v1/auth/me").status_code == 401
    refreshed = api.post("/api/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]}, format="json")
    assert refreshed.status_code == 401


# --- auth.identities (--identities) ------------------------------------------------------------------

IDENTITY_COLUMNS = [
    "provider_id", "user_id", "identity_data", "provider", "last_sign_in_at", "created_at", "updated_at", "email", "id"
]  # fmt: skip


def _identity_export(path: Path) -> Path:
    google = {"sub": "g-123", "email": "alice@example.com", "email_verified": True, "name": "Alice"}
    email = {"sub": str(IDS["alice"]), "email": "alice@example.com", "email_verified": True}
    rows = [
        ["g-123", IDS["alice"], json.dumps(google), "google", SIGNED_IN, CREATED, CREATED, "alice@example.com"],
        [str(IDS["alice"]), IDS["alice"], json.dumps(email), "email", SIGNED_IN, CREATED, CREATED, "alice@example.com"],
        ["g-999", uuid.uuid4(), json.dumps({"sub": "g-999"}), "google", "", CREATED, CREATED, ""],
    ]
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(IDENTITY_COLUMNS)
        for row in rows:
            writer.writerow([_pg_csv(value) for value in row] + [str(uuid.uuid4())])
    return path


def test_imported_identities_map_onto_the_users_and_show_in_the_gotrue_user_object(
    tmp_path, hashes, django_assert_num_queries
):
    users = write_csv(tmp_path / "users.csv", export_rows(hashes), broken_line=False)
    out, _ = run(users, identities=_identity_export(tmp_path / "identities.csv"))
    assert "2 identities imported; skipped: 1 user not imported" in out
    # Read as the API reads a user (the row says whether it has MFA factors).
    alice = User.objects.annotate(has_mfa_factors=has_mfa_factors()).get(pk=IDS["alice"])
    assert alice.app_metadata["providers"] == ["email", "google"]
    from accounts.gotrue.serializers import user_body

    with django_assert_num_queries(1):  # the identities: one query
        identities = user_body(alice)["identities"]
    assert [(identity["provider"], identity["id"]) for identity in identities] == [
        ("email", str(IDS["alice"])),
        ("google", "g-123"),
    ]
    run(users, identities=_identity_export(tmp_path / "identities.csv"))  # re-running updates, no duplicates
    assert alice.identities.count() == 2
