"""The operator's admin pages for referrals, intents, emails and codes (Django test client)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.admin.filters import DateFieldListFilter
from django.contrib.auth.models import Permission
from django.utils import timezone

from accounts.models import User
from accounts.tests.factories import UserFactory
from accounts.tests.test_users_sync import assert_admin_saved, user_change_data
from notifications.models import EmailNotification
from referrals import services
from referrals.models import (
    IntentStatus,
    Referral,
    ReferralCode,
    ReferralStatus,
    RejectReason,
)
from referrals.tests.factories import (
    ReferralIntentFactory,
    code_of,
    credited_count,
    refer,
    refer_rejected,
)

pytestmark = pytest.mark.django_db(transaction=False)

ADMIN_PASSWORD = "plum-harbour-velvet-42"
REFERRALS = "/admin/referrals/referral/"
INTENTS = "/admin/referrals/referralintent/"
CODES = "/admin/referrals/referralcode/"
USERS = "/admin/accounts/user/"


@pytest.fixture
def superuser(db):
    return User.objects.create_superuser("admin@example.com", ADMIN_PASSWORD)


@pytest.fixture
def admin(client, superuser):
    client.force_login(superuser)
    return client


@pytest.fixture
def rita(db):
    return UserFactory(email="rita@example.com", display_name="Rita")


@pytest.fixture
def world(rita):
    """Rita referred two people (one later rejected by an operator); one signup
    used an unknown code, one their own."""
    credited = refer(rita, email="credited@example.com")
    rejected = refer_rejected(rita, email="operator-rejected@example.com")
    unknown = refer(None, code="ZZZZ-ZZZZ", email="unknown-code@example.com")
    own_user = UserFactory(email="own-code@example.com")
    intent = ReferralIntentFactory(referred=own_user, code=code_of(own_user))
    services.referral_intent_process(intent_id=intent.pk)
    own = Referral.objects.get(referred=own_user)
    assert own.reason == RejectReason.OWN
    return {"credited": credited, "rejected": rejected, "unknown": unknown, "own": own}


def listed(response) -> set[str]:
    """The referred users' emails on a referral changelist page."""
    assert response.status_code == 200, response.content[:500]
    return {obj.referred.email for obj in response.context["cl"].result_list}


def rows(response) -> list:
    assert response.status_code == 200, response.content[:500]
    return list(response.context["cl"].result_list)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def run_action(client, url: str, action: str, objects: list) -> object:
    data = {"action": action, "_selected_action": [str(o.pk) for o in objects], "index": "0"}
    return client.post(url, data, follow=True)


# --- referral changelist ---------------------------------------------------------------------------


def test_referral_changelist_lists_every_referral_with_its_columns(admin, world):
    response = admin.get(REFERRALS)
    assert listed(response) == {
        "credited@example.com",
        "operator-rejected@example.com",
        "unknown-code@example.com",
        "own-code@example.com",
    }
    html = response.content.decode()
    for column in ("referred", "referrer", "code", "status", "reason", "created_at", "credited_at"):
        assert f"column-{column}" in html, column
    assert "rita@example.com" in html
    assert "Rejected by an operator" in html
    assert "Unknown code" in html
    assert "ZZZZ-ZZZZ" in html


def test_referral_changelist_runs_a_bounded_number_of_queries(admin, world, django_assert_max_num_queries):
    for _ in range(5):
        refer(world["credited"].referrer)
    with django_assert_max_num_queries(12):
        admin.get(REFERRALS)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"status__exact": "credited"}, {"credited@example.com"}),
        (
            {"status__exact": "rejected"},
            {"operator-rejected@example.com", "unknown-code@example.com", "own-code@example.com"},
        ),
        ({"status__exact": "pending"}, set()),
        ({"reason__exact": "operator"}, {"operator-rejected@example.com"}),
        ({"reason__exact": "unknown_code"}, {"unknown-code@example.com"}),
        ({"reason__exact": "own_code"}, {"own-code@example.com"}),
        ({"reason__exact": "malformed_code"}, set()),
    ],
)
def test_referral_changelist_filters_by_status_and_reason(admin, world, params, expected):
    assert listed(admin.get(REFERRALS, params)) == expected


def test_referral_changelist_filters_by_created_at(admin, world):
    Referral.objects.filter(pk=world["unknown"].pk).update(created_at=timezone.now() - timedelta(days=60))
    response = admin.get(REFERRALS)
    date_filter = next(f for f in response.context["cl"].filter_specs if isinstance(f, DateFieldListFilter))
    assert date_filter.field.name == "created_at"
    recent = listed(admin.get(REFERRALS, dict(date_filter.links)["Past 7 days"]))
    assert "credited@example.com" in recent
    assert "unknown-code@example.com" not in recent
    assert listed(admin.get(REFERRALS, dict(date_filter.links)["Any date"])) >= {"unknown-code@example.com"}


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("rita@", {"credited@example.com", "operator-rejected@example.com"}),  # referrer's email
        ("unknown-code@", {"unknown-code@example.com"}),  # referred user's email
        ("ZZZZ-ZZZZ", {"unknown-code@example.com"}),  # the code as typed
        ("no-such-thing", set()),
    ],
)
def test_referral_search_by_email_and_code(admin, world, term, expected):
    assert listed(admin.get(REFERRALS, {"q": term})) == expected


def test_referral_search_finds_a_code_in_any_spelling(admin, world, rita):
    typed = code_of(rita).replace("0", "o").replace("1", "l").lower()
    typed = f"{typed[:4]}-{typed[4:]}"
    assert listed(admin.get(REFERRALS, {"q": typed})) == {"credited@example.com", "operator-rejected@example.com"}
    assert listed(admin.get(REFERRALS, {"q": "zzzzzzzz"})) == {"unknown-code@example.com"}


def test_referral_changelist_with_unknown_filter_values_does_not_crash(admin, world):
    assert admin.get(REFERRALS, {"status__exact": "nonsense"}).status_code == 200


# --- referral actions ----------------------------------------------------------------------------


def test_reject_action_rejects_and_gives_the_credit_back(admin, world, rita):
    assert credited_count(rita) == 1
    response = run_action(admin, REFERRALS, "reject_selected", [world["credited"]])
    assert response.status_code == 200
    assert messages_of(response) == ["Rejected 1 referral(s)."]
    referral = Referral.objects.get(pk=world["credited"].pk)
    assert (referral.status, referral.reason) == (ReferralStatus.REJECTED, RejectReason.OPERATOR)
    assert credited_count(rita) == 0


def test_reject_action_reports_what_was_already_rejected(admin, world, rita):
    response = run_action(admin, REFERRALS, "reject_selected", [world["credited"], world["rejected"], world["unknown"]])
    assert messages_of(response) == ["Rejected 1 referral(s) (2 already rejected)."]
    assert Referral.objects.get(pk=world["unknown"].pk).reason == RejectReason.UNKNOWN  # reason kept
    assert credited_count(rita) == 0


def test_reprocess_action_credits_a_rejected_referral_with_a_valid_code(admin, world, rita):
    assert credited_count(rita) == 1
    response = run_action(admin, REFERRALS, "reprocess_selected", [world["rejected"]])
    assert messages_of(response) == ["Re-processed 1 referral(s): 1 changed (1 credited)."]
    referral = Referral.objects.get(pk=world["rejected"].pk)
    assert (referral.status, referral.reason) == (ReferralStatus.CREDITED, "")
    assert credited_count(rita) == 2
    # Its "you referred" email was recorded when it was first credited: not again.
    assert EmailNotification.objects.filter(event_key=f"referral_credited:{referral.pk}").count() == 1


def test_reprocess_action_reports_unchanged_and_skipped_referrals(admin, world, rita):
    response = run_action(admin, REFERRALS, "reprocess_selected", [world["credited"], world["unknown"]])
    assert messages_of(response) == ["Re-processed 2 referral(s): 0 changed (1 rejected, 1 skipped)."]
    assert Referral.objects.get(pk=world["credited"].pk).status == ReferralStatus.CREDITED
    assert Referral.objects.get(pk=world["unknown"].pk).reason == RejectReason.UNKNOWN
    assert credited_count(rita) == 1


def test_referral_actions_are_offered_and_bulk_delete_is_not(admin, world):
    response = admin.get(REFERRALS)
    choices = [value for value, _ in response.context["action_form"].fields["action"].choices]
    assert "reprocess_selected" in choices
    assert "reject_selected" in choices
    assert "delete_selected" not in choices


def test_a_view_only_staff_user_sees_the_list_but_cannot_run_actions(client, world):
    staff = UserFactory(email="viewer-staff@example.com", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_referral"))
    client.force_login(User.objects.get(pk=staff.pk))
    response = client.get(REFERRALS)
    assert len(rows(response)) == 4
    assert response.context["action_form"] is None or "reject_selected" not in [
        value for value, _ in response.context["action_form"].fields["action"].choices
    ]
    client.post(REFERRALS, {"action": "reject_selected", "_selected_action": [str(world["credited"].pk)], "index": "0"})
    assert Referral.objects.get(pk=world["credited"].pk).status == ReferralStatus.CREDITED


# --- read-only -------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [REFERRALS, INTENTS, CODES])
def test_nothing_can_be_added_by_hand(admin, world, url):
    response = admin.get(url)
    assert response.status_code == 200
    assert f'href="{url}add/"' not in response.content.decode()
    assert admin.get(f"{url}add/").status_code == 403


def test_the_referral_page_is_view_only(admin, world):
    referral = world["credited"]
    url = f"{REFERRALS}{referral.pk}/change/"
    response = admin.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    for name in ("status", "referrer", "referred", "reason", "code"):
        assert not re.search(rf'name="{name}"', html), name
    assert 'name="_save"' not in html
    assert "rita@example.com" in html
    # A hand-made POST changes nothing.
    admin.post(url, {"status": "rejected", "referrer": "", "_save": "Save"})
    referral.refresh_from_db()
    assert referral.status == ReferralStatus.CREDITED
    assert referral.referrer is not None


@pytest.mark.parametrize("url", [REFERRALS, INTENTS])
def test_rows_cannot_be_deleted_from_their_own_pages(admin, world, url):
    obj = rows(admin.get(url))[0]
    assert admin.get(f"{url}{obj.pk}/delete/").status_code == 403
    assert admin.post(f"{url}{obj.pk}/delete/", {"post": "yes"}).status_code == 403
    assert type(obj).objects.filter(pk=obj.pk).exists()


def test_a_code_cannot_be_deleted_from_its_own_page(admin, rita):
    assert admin.post(f"{CODES}{rita.pk}/delete/", {"post": "yes"}).status_code == 403
    assert ReferralCode.objects.filter(user=rita).exists()


def test_deleting_a_user_still_takes_their_referral_rows_with_them(admin, world, rita):
    referred = world["credited"].referred
    response = admin.get(f"{USERS}{referred.pk}/delete/")
    assert response.status_code == 200
    assert not response.context["perms_lacking"]
    response = admin.post(f"{USERS}{referred.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not User.objects.filter(pk=referred.pk).exists()
    assert not Referral.objects.filter(referred_id=referred.pk).exists()


# --- intents, codes ----------------------------------------------------------------------------


def test_intent_changelist_renders_and_filters_by_status(admin, world):
    pending = ReferralIntentFactory(referred=UserFactory(email="waiting@example.com"), code="ABCD-2345")
    response = admin.get(INTENTS)
    assert len(rows(response)) == 5
    html = response.content.decode()
    for column in ("referred", "code", "status", "attempts", "created_at", "processed_at"):
        assert f"column-{column}" in html, column
    assert [i.pk for i in rows(admin.get(INTENTS, {"status__exact": "pending"}))] == [pending.pk]
    assert len(rows(admin.get(INTENTS, {"status__exact": IntentStatus.DONE}))) == 4
    assert [i.pk for i in rows(admin.get(INTENTS, {"q": "waiting@"}))] == [pending.pk]
    assert admin.get(f"{INTENTS}{pending.pk}/change/").status_code == 200


def test_code_changelist_renders_and_searches_by_code_and_email(admin, world, rita):
    response = admin.get(CODES)
    html = response.content.decode()
    for column in ("code", "user", "credited_count"):
        assert f"column-{column}" in html, column
    assert len(rows(response)) == ReferralCode.objects.count()
    code = code_of(rita)
    assert [c.user_id for c in rows(admin.get(CODES, {"q": code}))] == [rita.pk]
    assert [c.user_id for c in rows(admin.get(CODES, {"q": f"{code[:4].lower()}-{code[4:].lower()}"}))] == [rita.pk]
    assert [c.user_id for c in rows(admin.get(CODES, {"q": "rita@"}))] == [rita.pk]
    page = admin.get(f"{CODES}{rita.pk}/change/")
    assert page.status_code == 200
    assert 'name="credited_count"' not in page.content.decode()
    assert 'name="code"' not in page.content.decode()


# --- the user change page --------------------------------------------------------------------------------


def test_user_change_page_shows_the_code_the_counter_and_the_referrals_inline(admin, world, rita):
    response = admin.get(f"{USERS}{rita.pk}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    assert code_of(rita) in html
    assert re.search(r"credited referrals \(counter\):</label>\s*<div class=\"readonly\">1</div>", html, re.I)
    assert "pending: 0, credited: 1, rejected: 1" in html
    assert f"{REFERRALS}?referrer__id__exact={rita.pk}" in html
    assert 'id="referrals_made-group"' in html
    assert 'name="referrals_made-TOTAL_FORMS" value="2"' in html
    assert "credited@example.com" in html
    assert "operator-rejected@example.com" in html
    assert "unknown-code@example.com" not in html
    # View-only inline: nothing to edit, nothing to add or delete.
    assert not re.search(r'name="referrals_made-\d+-(status|reason|referred|code)"', html)
    assert "referrals_made-0-DELETE" not in html
    assert 'name="referrals_made-MAX_NUM_FORMS" value="0"' in html  # no "add another" row


def test_the_all_referrals_link_lists_that_users_referrals(admin, world, rita):
    response = admin.get(REFERRALS, {"referrer__id__exact": str(rita.pk)})
    assert listed(response) == {"credited@example.com", "operator-rejected@example.com"}


def test_user_change_page_shows_who_referred_the_user(admin, world):
    response = admin.get(f"{USERS}{world['credited'].referred_id}/change/")
    html = response.content.decode()
    assert "Referred by:" in html
    assert "rita@example.com" in html
    assert f"{REFERRALS}{world['credited'].pk}/change/" in html


def test_user_change_page_of_a_user_without_a_code_renders(admin):
    user = UserFactory(email="nocode@example.com")
    ReferralCode.objects.filter(user=user).delete()
    response = admin.get(f"{USERS}{user.pk}/change/")
    assert response.status_code == 200
    assert "none yet" in response.content.decode()


def test_user_change_form_with_referrals_inline_still_saves(admin, world, rita):
    data = user_change_data(admin, rita, display_name="Rita Renamed")
    assert data["referrals_made-TOTAL_FORMS"] == ["2"]
    response = admin.post(f"{USERS}{rita.pk}/change/", data)
    assert_admin_saved(response)
    assert User.objects.get(pk=rita.pk).display_name == "Rita Renamed"
    assert Referral.objects.filter(referrer=rita).count() == 2
    assert sorted(Referral.objects.filter(referrer=rita).values_list("status", flat=True)) == [
        ReferralStatus.CREDITED,
        ReferralStatus.REJECTED,
    ]
    assert credited_count(rita) == 1


def test_user_change_form_ignores_a_forged_referral_status(admin, world, rita):
    data = user_change_data(admin, rita)
    data["referrals_made-0-status"] = "credited"
    data["referrals_made-1-status"] = "credited"
    response = admin.post(f"{USERS}{rita.pk}/change/", data)
    assert_admin_saved(response)
    assert Referral.objects.get(pk=world["rejected"].pk).status == ReferralStatus.REJECTED
    assert credited_count(rita) == 1


def test_user_add_form_still_works(admin):
    response = admin.post(
        f"{USERS}add/",
        {"email": "fresh@example.com", "password1": ADMIN_PASSWORD, "password2": ADMIN_PASSWORD, "_save": "Save"},
    )
    assert response.status_code == 302, response.content[:500]
    assert ReferralCode.objects.filter(user__email="fresh@example.com").exists()


# --- access ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [REFERRALS, INTENTS, CODES])
def test_anonymous_users_are_sent_to_the_admin_login(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_the_admin_index_lists_the_referral_models(admin):
    html = admin.get("/admin/").content.decode()
    for url in (REFERRALS, INTENTS, CODES):
        assert f'href="{url}"' in html
    assert 'href="/admin/referrals/emailnotification/"' not in html  # the outbox is notifications' page
