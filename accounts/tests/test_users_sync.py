"""users-sync: the public mirror ("users") follows the auth user ("auth_users").

Every ORM path that fires signals is exercised for real: the API, the Django
admin forms, createsuperuser, and shell-style ORM calls. The `sync_users`
command repairs what bypassed the signals (bulk_create, hand edits, raw SQL).
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from html.parser import HTMLParser
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import PublicUser, Session, User
from accounts.tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=False)

SIGNUP = "/api/v1/auth/signup"
ME = "/api/v1/auth/me"
ADMIN_ADD = "/admin/accounts/user/add/"
STRONG_PASSWORD = "plum-harbour-velvet-42"
MIRRORED = ("email", "username", "display_name")

# Statements that read or write the mirror table. "auth_users" must not match:
# Django quotes table names, so the mirror is the only `"users"`.
MIRROR_SQL = re.compile(r'"users"')


# --- helpers ------------------------------------------------------------------------


def mirror_of(user: User) -> PublicUser:
    return PublicUser.objects.get(pk=user.pk)


def assert_mirror_matches(user_id: uuid.UUID) -> PublicUser:
    """The mirror row exists and carries the auth user's current values (from the DB)."""
    user = User.objects.get(pk=user_id)
    row = PublicUser.objects.get(pk=user_id)
    assert {name: getattr(row, name) for name in MIRRORED} == {name: getattr(user, name) for name in MIRRORED}
    return row


def mirror_statements(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if MIRROR_SQL.search(q["sql"])]


def mirror_snapshot() -> dict[uuid.UUID, tuple]:
    return {
        row.pk: (row.email, row.username, row.display_name, row.role, row.updated_at)
        for row in PublicUser.objects.all()
    }


def sync_users() -> str:
    out = StringIO()
    call_command("sync_users", stdout=out)
    return out.getvalue()


class _FormFields(HTMLParser):
    """What a browser would submit from one <form id=...>: enabled inputs
    (checked boxes only), selected options, textareas. Inline "__prefix__"
    templates are skipped, as the admin's JavaScript does."""

    def __init__(self, form_id: str) -> None:
        super().__init__(convert_charrefs=True)
        self.form_id = form_id
        self.inside = False
        self.values: dict[str, list[str]] = {}
        self.names: set[str] = set()  # every field name, submitted or not
        self._select: tuple[str, bool] | None = None
        self._select_first: str | None = None
        self._select_chosen = False
        self._textarea: str | None = None
        self._text: list[str] = []

    def _add(self, name: str, value: str) -> None:
        if "__prefix__" not in name:
            self.values.setdefault(name, []).append(value)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {key: (value if value is not None else "") for key, value in attrs}
        if tag == "form" and a.get("id") == self.form_id:
            self.inside = True
        if not self.inside or "disabled" in a:
            return
        name = a.get("name")
        if tag == "input" and name:
            self.names.add(name)
            kind = a.get("type", "text").lower()
            if kind in {"submit", "button", "image", "reset", "file"}:
                return
            if kind in {"checkbox", "radio"}:
                if "checked" in a:
                    self._add(name, a.get("value", "on"))
                return
            self._add(name, a.get("value", ""))
        elif tag == "select" and name:
            self.names.add(name)
            self._select = (name, "multiple" in a)
            self._select_first, self._select_chosen = None, False
        elif tag == "option" and self._select is not None:
            value = a.get("value", "")
            if self._select_first is None:
                self._select_first = value
            if "selected" in a:
                self._add(self._select[0], value)
                self._select_chosen = True
        elif tag == "textarea" and name:
            self.names.add(name)
            self._textarea, self._text = name, []

    def handle_endtag(self, tag: str) -> None:
        if tag == "form" and self.inside:
            self.inside = False
        elif tag == "select" and self._select is not None:
            name, multiple = self._select
            if not multiple and not self._select_chosen and self._select_first is not None:
                self._add(name, self._select_first)
            self._select = None
        elif tag == "textarea" and self._textarea is not None:
            self._add(self._textarea, "".join(self._text).removeprefix("\n"))
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._text.append(data)


def user_change_data(client: Client, user: User, *, role: str | None = None, **changes: object) -> dict[str, object]:
    """POST data for the admin user change form: the rendered form (fieldsets
    and every inline with its management form) as a browser would send it,
    with `changes` applied to the user's fields and `role` to the mirror inline."""
    response = client.get(admin_change_url(user))
    assert response.status_code == 200
    parser = _FormFields("user_form")
    parser.feed(response.content.decode())
    data: dict[str, object] = dict(parser.values)
    # The fieldsets and inlines these tests rely on are really on the page.
    for name in ("email", "username", "display_name", "is_active", "profile-TOTAL_FORMS", "profile-0-role"):
        assert name in parser.names, f"{name} is not on the user change form"
    assert "auth_sessions-TOTAL_FORMS" in parser.names
    if role is not None:
        changes["profile-0-role"] = role
    for name, value in changes.items():
        assert name in parser.names, f"{name} is not on the user change form"
        if value is True:
            data[name] = "on"
        elif value is False:
            data.pop(name, None)  # an unchecked checkbox is absent from a POST
        else:
            data[name] = value
    data["_save"] = "Save"
    return data


def admin_change_url(user: User) -> str:
    return f"/admin/accounts/user/{user.pk}/change/"


def assert_admin_saved(response) -> None:
    """A save redirects; a form error re-renders the page (200) with the errors."""
    if response.status_code == 302:
        return
    context = response.context or {}
    errors: list[object] = []
    if "adminform" in context:
        errors.append(context["adminform"].form.errors)
    for inline in context.get("inline_admin_formsets", []):
        errors.append((inline.formset.prefix, inline.formset.errors, inline.formset.non_form_errors()))
    raise AssertionError(f"admin form not saved ({response.status_code}): {errors}")


@pytest.fixture
def superuser(db):
    return User.objects.create_superuser("root@example.com", STRONG_PASSWORD)


@pytest.fixture
def admin(client, superuser):
    client.force_login(superuser)
    return client


@pytest.fixture
def mirror_insert_fails():
    """A real database failure on the mirror table: a trigger rejects any
    "users" row whose email starts with "mirror-fails". Committed DDL (for
    transaction=True tests), so it is always dropped afterwards."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            CREATE OR REPLACE FUNCTION test_users_sync_reject() RETURNS trigger AS $$
            BEGIN
                IF NEW.email LIKE 'mirror-fails%' THEN
                    RAISE EXCEPTION 'mirror write rejected by test trigger';
                END IF;
                RETURN NEW;
            END $$ LANGUAGE plpgsql
            """
        )
        cursor.execute(
            "CREATE TRIGGER test_users_sync_reject BEFORE INSERT OR UPDATE ON users "
            "FOR EACH ROW EXECUTE FUNCTION test_users_sync_reject()"
        )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER IF EXISTS test_users_sync_reject ON users")
            cursor.execute("DROP FUNCTION IF EXISTS test_users_sync_reject()")


# --- API ------------------------------------------------------------------------------


def test_api_signup_creates_the_mirror_row_with_the_normalised_email(api):
    response = api.post(
        SIGNUP, {"email": "New.Person@Example.COM", "password": STRONG_PASSWORD, "username": "newbie"}, format="json"
    )
    assert response.status_code == 201, response.content
    user = User.objects.get(pk=response.json()["user"]["id"])
    row = assert_mirror_matches(user.pk)
    assert row.email == "New.Person@example.com"
    assert row.username == "newbie"
    assert row.display_name == ""
    assert row.role == "viewer"
    assert row.created_at == user.date_joined
    assert response.json()["user"]["role"] == "viewer"


def test_api_signup_without_username_mirrors_null_username(api):
    response = api.post(SIGNUP, {"email": "nouser@example.com", "password": STRONG_PASSWORD}, format="json")
    assert response.status_code == 201, response.content
    row = assert_mirror_matches(response.json()["user"]["id"])
    assert row.username is None


def test_rejected_api_signup_leaves_no_mirror_row(api):
    UserFactory(email="taken@example.com")
    before = PublicUser.objects.count()
    response = api.post(SIGNUP, {"email": "TAKEN@example.com", "password": STRONG_PASSWORD}, format="json")
    assert response.status_code == 409
    assert PublicUser.objects.count() == before


def test_patch_me_display_name_and_username_update_the_mirror(auth_api, user):
    old_updated_at = mirror_of(user).updated_at
    response = auth_api.patch(ME, {"display_name": "Renamed Person", "username": "renamed_1"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["display_name"] == "Renamed Person"
    row = assert_mirror_matches(user.pk)
    assert row.display_name == "Renamed Person"
    assert row.username == "renamed_1"
    assert row.updated_at > old_updated_at


def test_patch_me_clearing_the_username_mirrors_null(auth_api, user):
    User.objects.filter(pk=user.pk).update(username="to_clear")
    PublicUser.objects.filter(pk=user.pk).update(username="to_clear")
    response = auth_api.patch(ME, {"username": ""}, format="json")
    assert response.status_code == 200, response.content
    assert mirror_of(user).username is None
    assert_mirror_matches(user.pk)


def test_patch_me_keeps_the_role_set_on_the_mirror(auth_api, user):
    PublicUser.objects.filter(pk=user.pk).update(role="editor")
    response = auth_api.patch(ME, {"display_name": "Still Editor"}, format="json")
    assert response.status_code == 200
    assert response.json()["role"] == "editor"
    assert mirror_of(user).role == "editor"


# --- Django admin ------------------------------------------------------------------------


def test_admin_add_form_creates_the_mirror_row(admin):
    response = admin.post(
        ADMIN_ADD,
        {
            "email": "Added.By.Admin@Example.com",
            "username": "added_admin",
            "password1": STRONG_PASSWORD,
            "password2": STRONG_PASSWORD,
            "_save": "Save",
        },
    )
    assert_admin_saved(response)
    user = User.objects.get(email="Added.By.Admin@example.com")
    assert user.check_password(STRONG_PASSWORD)
    row = assert_mirror_matches(user.pk)
    assert row.username == "added_admin"
    assert row.role == "viewer"


def test_admin_add_form_with_blank_username_mirrors_null(admin):
    response = admin.post(
        ADMIN_ADD,
        {
            "email": "blank-username@example.com",
            "username": "",
            "password1": STRONG_PASSWORD,
            "password2": STRONG_PASSWORD,
        },
    )
    assert_admin_saved(response)
    row = assert_mirror_matches(User.objects.get(email="blank-username@example.com").pk)
    assert row.username is None


def test_admin_change_form_edits_reach_the_mirror(admin):
    user = UserFactory(email="before@example.com", username="before_name", display_name="Before")
    data = user_change_data(admin, user, email="after@example.com", username="after_name", display_name="After")
    response = admin.post(admin_change_url(user), data)
    assert_admin_saved(response)
    row = assert_mirror_matches(user.pk)
    assert (row.email, row.username, row.display_name) == ("after@example.com", "after_name", "After")


def test_admin_change_form_sets_the_role_through_the_inline(admin):
    user = UserFactory()
    response = admin.post(admin_change_url(user), user_change_data(admin, user, role="editor"))
    assert_admin_saved(response)
    assert mirror_of(user).role == "editor"
    assert_mirror_matches(user.pk)


def test_admin_change_form_editing_profile_and_role_together_keeps_the_mirror_in_step(admin):
    # The inline's PublicUser instance is loaded before the user is saved; when
    # the role changes too, saving that instance must not write the old
    # email/username/display_name back over what users-sync just wrote.
    user = UserFactory(email="both-before@example.com", username="both_before", display_name="Both Before")
    data = user_change_data(
        admin, user, role="admin", email="both-after@example.com", username="both_after", display_name="Both After"
    )
    response = admin.post(admin_change_url(user), data)
    assert_admin_saved(response)
    assert User.objects.get(pk=user.pk).email == "both-after@example.com"
    row = mirror_of(user)
    assert row.role == "admin"
    assert (row.email, row.username, row.display_name) == ("both-after@example.com", "both_after", "Both After")


def test_admin_change_form_of_a_user_with_sessions_keeps_them_and_syncs(admin, login):
    user = UserFactory(display_name="Has Sessions")
    login(user)
    login(user)
    data = user_change_data(admin, user, display_name="Has Sessions Renamed")
    assert data["auth_sessions-TOTAL_FORMS"] == ["2"]
    response = admin.post(admin_change_url(user), data)
    assert_admin_saved(response)
    assert mirror_of(user).display_name == "Has Sessions Renamed"
    assert Session.objects.filter(user=user, revoked_at__isnull=True).count() == 2


# --- createsuperuser ------------------------------------------------------------------------


def test_createsuperuser_noinput_creates_the_mirror_row(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", STRONG_PASSWORD)
    call_command("createsuperuser", "--noinput", "--email", "Boss@Example.COM", stdout=StringIO())
    user = User.objects.get(email="Boss@example.com")
    assert user.is_superuser and user.is_staff
    assert user.check_password(STRONG_PASSWORD)
    row = assert_mirror_matches(user.pk)
    assert row.role == "viewer"


def test_createsuperuser_refuses_an_email_taken_in_another_case(monkeypatch):
    UserFactory(email="boss@example.com")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", STRONG_PASSWORD)
    with pytest.raises(CommandError):
        call_command("createsuperuser", "--noinput", "--email", "BOSS@example.com", stdout=StringIO())
    assert User.objects.filter(email__lower="boss@example.com").count() == 1
    assert PublicUser.objects.filter(email__lower="boss@example.com").count() == 1


# --- shell-style ORM ----------------------------------------------------------------------


def test_create_user_creates_the_mirror_row():
    user = User.objects.create_user("shell@example.com", STRONG_PASSWORD, username="shelly", display_name="Shell")
    row = assert_mirror_matches(user.pk)
    assert (row.email, row.username, row.display_name, row.role) == ("shell@example.com", "shelly", "Shell", "viewer")
    assert row.created_at == user.date_joined


@pytest.mark.parametrize(
    ("field", "value"),
    [("email", "changed@example.com"), ("username", "changed_name"), ("display_name", "Changed Name")],
)
def test_user_save_after_a_change_updates_the_mirror(field, value):
    user = UserFactory(username="orig_name", display_name="Orig")
    setattr(user, field, value)
    user.save()
    row = assert_mirror_matches(user.pk)
    assert getattr(row, field) == value


def test_user_save_with_update_fields_of_a_mirrored_field_updates_the_mirror():
    user = UserFactory(display_name="Orig")
    user.display_name = "Partial Save"
    user.save(update_fields=["display_name"])
    assert mirror_of(user).display_name == "Partial Save"


def test_user_save_normalises_the_email_before_it_is_mirrored():
    user = UserFactory()
    user.email = "  Mixed.Case@EXAMPLE.ORG "
    user.save()
    assert mirror_of(user).email == "Mixed.Case@example.org"
    assert_mirror_matches(user.pk)


def test_user_save_with_a_blank_username_mirrors_null():
    user = UserFactory(username="had_one")
    user.username = ""
    user.save()
    assert User.objects.get(pk=user.pk).username is None
    assert mirror_of(user).username is None


def test_user_delete_removes_the_mirror_row():
    user = UserFactory()
    other = UserFactory()
    user_id = user.pk
    user.delete()
    assert not PublicUser.objects.filter(pk=user_id).exists()
    assert PublicUser.objects.filter(pk=other.pk).exists()


def test_queryset_delete_removes_the_mirror_rows():
    doomed = [UserFactory(email=f"doomed{i}@example.com") for i in range(3)]
    kept = UserFactory(email="kept@example.com")
    User.objects.filter(email__startswith="doomed").delete()
    assert not PublicUser.objects.filter(pk__in=[u.pk for u in doomed]).exists()
    assert PublicUser.objects.filter(pk=kept.pk).exists()


def test_role_defaults_to_viewer():
    assert mirror_of(UserFactory()).role == "viewer"


def test_role_set_on_the_mirror_survives_a_user_resave():
    user = UserFactory()
    row = mirror_of(user)
    row.role = "editor"
    row.save()
    user.display_name = "Resaved"
    user.email = "resaved@example.com"
    user.save()
    row = assert_mirror_matches(user.pk)
    assert row.role == "editor"


def test_resave_recreates_a_missing_mirror_row_with_the_default_role():
    user = UserFactory()
    PublicUser.objects.filter(pk=user.pk).delete()
    user.save()
    row = assert_mirror_matches(user.pk)
    assert row.role == "viewer"


def test_password_only_save_does_not_touch_the_mirror():
    user = UserFactory()
    before = mirror_of(user).updated_at
    user.set_password("another-strong-passphrase")
    with CaptureQueriesContext(connection) as queries:
        user.save(update_fields=["password"])
    assert any('"auth_users"' in q["sql"] for q in queries.captured_queries)
    assert mirror_statements(queries) == []
    assert mirror_of(user).updated_at == before


def test_last_login_only_save_does_not_touch_the_mirror():
    user = UserFactory()
    user.last_login = timezone.now()
    with CaptureQueriesContext(connection) as queries:
        user.save(update_fields=["last_login"])
    assert mirror_statements(queries) == []


def test_full_save_does_write_the_mirror():
    # Control for the two tests above: the matcher sees mirror writes.
    user = UserFactory()
    with CaptureQueriesContext(connection) as queries:
        user.save()
    assert mirror_statements(queries), [q["sql"] for q in queries.captured_queries]


# --- one transaction ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_user_created_in_a_transaction_that_raises_leaves_neither_row():
    email = "rolled-back@example.com"
    with pytest.raises(RuntimeError), transaction.atomic():
        user = User.objects.create_user(email, STRONG_PASSWORD)
        assert PublicUser.objects.filter(pk=user.pk).exists()  # written inside the same transaction
        raise RuntimeError("boom after save")
    assert not User.objects.filter(email=email).exists()
    assert not PublicUser.objects.filter(email=email).exists()


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_a_failing_mirror_insert_means_the_user_is_not_created_either(mirror_insert_fails):
    # Autocommit mode, no atomic() around the call: only User.save's own
    # transaction can undo the auth_users insert.
    assert not connection.in_atomic_block
    with pytest.raises(DatabaseError, match="rejected by test trigger"):
        User.objects.create_user("mirror-fails@example.com", STRONG_PASSWORD)
    assert not User.objects.filter(email="mirror-fails@example.com").exists()
    assert not PublicUser.objects.filter(email="mirror-fails@example.com").exists()
    # The trigger only rejects its marker: other users are unaffected.
    ok = User.objects.create_user("mirror-ok@example.com", STRONG_PASSWORD)
    assert_mirror_matches(ok.pk)


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_a_failing_mirror_update_means_the_user_change_is_not_saved(mirror_insert_fails):
    user = User.objects.create_user("stays@example.com", STRONG_PASSWORD)
    user.email = "mirror-fails-later@example.com"
    with pytest.raises(DatabaseError, match="rejected by test trigger"):
        user.save()
    assert User.objects.get(pk=user.pk).email == "stays@example.com"
    assert_mirror_matches(user.pk)


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_a_failing_mirror_insert_fails_the_api_signup_without_a_user_or_session(api, mirror_insert_fails):
    api.raise_request_exception = False  # the status code is not what this test is about
    email = "mirror-fails-api@example.com"
    response = api.post(SIGNUP, {"email": email, "password": STRONG_PASSWORD}, format="json")
    assert response.status_code != 201
    assert not User.objects.filter(email=email).exists()
    assert not Session.objects.filter(user__email=email).exists()


# --- sync_users command ------------------------------------------------------------------


def _bulk_users(*emails: str) -> list[User]:
    now = timezone.now()
    return User.objects.bulk_create(
        [
            User(email=email, display_name=f"Bulk {i}", date_joined=now - timedelta(days=i))
            for i, email in enumerate(emails)
        ]
    )


def test_bulk_created_users_have_no_mirror_until_sync_users_backfills_them():
    users = _bulk_users("bulk0@example.com", "bulk1@example.com")
    assert not PublicUser.objects.filter(pk__in=[u.pk for u in users]).exists()
    out = sync_users()
    for user in users:
        assert f"created mirror row {user.pk}" in out
        row = assert_mirror_matches(user.pk)
        assert row.role == "viewer"
        assert row.created_at == user.date_joined
    assert "created=2 updated=0" in out


def test_sync_users_repairs_rows_edited_through_the_orm():
    user = UserFactory(email="true@example.com", display_name="True Name")
    untouched = UserFactory()
    PublicUser.objects.filter(pk=user.pk).update(email="drifted@example.com", display_name="Drifted")
    out = sync_users()
    assert f"updated mirror row {user.pk}" in out
    assert str(untouched.pk) not in out
    assert "created=0 updated=1" in out
    row = assert_mirror_matches(user.pk)
    assert (row.email, row.display_name) == ("true@example.com", "True Name")


@pytest.mark.postgresql
def test_sync_users_repairs_rows_edited_with_raw_sql():
    user = UserFactory(username="real_name")
    with connection.cursor() as cursor:
        cursor.execute(
            'UPDATE "users" SET username = %s, display_name = %s WHERE id = %s', ["sql_name", "SQL", user.pk]
        )
    assert mirror_of(user).username == "sql_name"
    out = sync_users()
    assert f"updated mirror row {user.pk}" in out
    assert "created=0 updated=1" in out
    assert_mirror_matches(user.pk)


def test_sync_users_reports_created_and_updated_counts_together():
    (bulk,) = _bulk_users("mixed-bulk@example.com")
    drifted = UserFactory()
    PublicUser.objects.filter(pk=drifted.pk).update(display_name="stale")
    in_sync = UserFactory()
    out = sync_users()
    assert f"created mirror row {bulk.pk}" in out
    assert f"updated mirror row {drifted.pk}" in out
    assert str(in_sync.pk) not in out
    assert "created=1 updated=1" in out


def test_sync_users_is_idempotent():
    _bulk_users("idem0@example.com", "idem1@example.com")
    drifted = UserFactory()
    PublicUser.objects.filter(pk=drifted.pk).update(email="wrong@example.com")
    first = sync_users()
    assert "created=2 updated=1" in first
    snapshot = mirror_snapshot()
    second = sync_users()
    assert "created=0 updated=0" in second
    assert "mirror row" not in second
    assert mirror_snapshot() == snapshot


def test_sync_users_preserves_the_role():
    user = UserFactory(display_name="Role Keeper")
    PublicUser.objects.filter(pk=user.pk).update(role="admin", display_name="drift")
    out = sync_users()
    assert "updated=1" in out
    row = assert_mirror_matches(user.pk)
    assert row.role == "admin"


def test_sync_users_with_nothing_to_do_changes_nothing():
    users = [UserFactory() for _ in range(3)]
    out = sync_users()
    assert "created=0 updated=0 unchanged=" in out
    assert int(re.search(r"unchanged=(\d+)", out).group(1)) >= len(users)


# --- the nightly repair (beat): accounts' own job, no longer the referral sync's ---------------------


def test_the_repair_mirror_task_backfills_and_fixes_the_mirror_and_is_idempotent():
    from accounts.tasks import repair_mirror

    _bulk_users("nightly0@example.com", "nightly1@example.com")
    stale = UserFactory(email="stale@example.com")
    PublicUser.objects.filter(pk=stale.pk).update(email="old@example.com")

    report = repair_mirror()

    assert (report["created"], report["updated"]) == (2, 1)
    assert PublicUser.objects.get(pk=stale.pk).email == "stale@example.com"
    assert PublicUser.objects.filter(email__in=["nightly0@example.com", "nightly1@example.com"]).count() == 2
    again = repair_mirror()
    assert (again["created"], again["updated"]) == (0, 0)


def test_the_repair_mirror_task_runs_nightly_on_the_beat_schedule(settings):
    entries = {entry["task"]: entry["schedule"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    hour, minute = (int(part) for part in settings.REFERRAL_SYNC_TIME.split(":"))
    nightly = entries["accounts.repair_mirror"]
    assert (nightly.hour, nightly.minute) == ({hour}, {minute})
