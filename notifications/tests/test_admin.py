"""The outbox's admin page: view-only, filters, the retry action (moved from referrals' admin)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core import mail
from django.utils import timezone

from notifications import services
from notifications.models import EmailKind, EmailNotification, EmailStatus
from notifications.tests.factories import EmailNotificationFactory, RecipientFactory

pytestmark = pytest.mark.django_db(transaction=False)

EMAILS = "/admin/notifications/emailnotification/"


@pytest.fixture
def admin(client, db):
    superuser = get_user_model().objects.create_superuser("admin@example.com", "plum-harbour-velvet-42")
    client.force_login(superuser)
    return client


@pytest.fixture
def outbox(db):
    """Two "you referred" emails, a welcome one sent, one failed."""
    rita = RecipientFactory(email="rita@example.com")
    rows = [
        EmailNotificationFactory(recipient=rita, kind=EmailKind.REFERRAL_CREDITED, event_key="referral_credited:1"),
        EmailNotificationFactory(recipient=rita, kind=EmailKind.REFERRAL_CREDITED, event_key="referral_credited:2"),
        EmailNotificationFactory(status=EmailStatus.SENT, attempts=1, sent_at=timezone.now()),
        EmailNotificationFactory(status=EmailStatus.FAILED, attempts=10, last_error="SMTPServerDisconnected: boom"),
    ]
    return rows


def rows(response) -> list:
    assert response.status_code == 200, response.content[:500]
    return list(response.context["cl"].result_list)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def run_action(client, url: str, action: str, objects: list) -> object:
    data = {"action": action, "_selected_action": [str(o.pk) for o in objects], "index": "0"}
    return client.post(url, data, follow=True)


def test_email_changelist_renders_and_filters_by_status_and_kind(admin, outbox):
    response = admin.get(EMAILS)
    html = response.content.decode()
    for column in ("event_key", "kind", "recipient", "status", "attempts", "last_error", "created_at", "sent_at"):
        assert f"column-{column}" in html, column
    assert "SMTPServerDisconnected: boom" in html
    assert len(rows(response)) == EmailNotification.objects.count() == 4
    assert {e.status for e in rows(admin.get(EMAILS, {"status__exact": "failed"}))} == {EmailStatus.FAILED}
    credited = rows(admin.get(EMAILS, {"kind__exact": EmailKind.REFERRAL_CREDITED}))
    assert len(credited) == 2
    assert {e.kind for e in credited} == {EmailKind.REFERRAL_CREDITED}
    assert {e.pk for e in rows(admin.get(EMAILS, {"q": "rita@"}))} == {outbox[0].pk, outbox[1].pk}
    row = credited[0]
    page = admin.get(f"{EMAILS}{row.pk}/change/")
    assert page.status_code == 200
    assert row.event_key in page.content.decode()


def test_retry_failed_action_puts_failed_emails_back_for_the_sweeper(admin, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    failed = EmailNotificationFactory(status=EmailStatus.FAILED, attempts=10, last_error="boom")
    exhausted = EmailNotificationFactory(status=EmailStatus.PENDING, attempts=settings.EMAIL_MAX_ATTEMPTS)
    sent = EmailNotificationFactory(status=EmailStatus.SENT, attempts=1, sent_at=timezone.now())
    response = run_action(admin, EMAILS, "retry_failed", [failed, exhausted, sent])
    assert messages_of(response) == ["Queued 2 email(s) for another attempt (1 not failed, left alone)."]
    for row in (failed, exhausted):
        row.refresh_from_db()
        assert (row.status, row.attempts, row.claimed_at) == (EmailStatus.PENDING, 0, None)
    sent.refresh_from_db()
    assert (sent.status, sent.attempts) == (EmailStatus.SENT, 1)

    mail.outbox = []
    assert services.emails_sweep(min_age_seconds=0)["emails"] == 2
    assert len(mail.outbox) == 2


def test_a_view_only_staff_user_cannot_retry(client, outbox):
    staff = RecipientFactory(email="viewer-staff@example.com", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_emailnotification"))
    client.force_login(get_user_model().objects.get(pk=staff.pk))
    response = client.get(EMAILS)
    assert len(rows(response)) == 4
    assert response.context["action_form"] is None or "retry_failed" not in [
        value for value, _ in response.context["action_form"].fields["action"].choices
    ]
    failed = outbox[3]
    client.post(EMAILS, {"action": "retry_failed", "_selected_action": [str(failed.pk)], "index": "0"})
    assert EmailNotification.objects.get(pk=failed.pk).status == EmailStatus.FAILED


def test_the_permissions_belong_to_the_notifications_app():
    perms = Permission.objects.filter(codename__endswith="_emailnotification")
    assert {p.content_type.app_label for p in perms} == {"notifications"}


def test_nothing_can_be_added_by_hand(admin, outbox):
    response = admin.get(EMAILS)
    assert f'href="{EMAILS}add/"' not in response.content.decode()
    assert admin.get(f"{EMAILS}add/").status_code == 403


def test_the_email_page_is_view_only(admin, outbox):
    row = outbox[3]
    url = f"{EMAILS}{row.pk}/change/"
    html = admin.get(url).content.decode()
    assert 'name="status"' not in html
    assert 'name="_save"' not in html
    admin.post(url, {"status": "pending", "_save": "Save"})
    assert EmailNotification.objects.get(pk=row.pk).status == EmailStatus.FAILED


def test_rows_cannot_be_deleted_from_their_own_page(admin, outbox):
    obj = outbox[0]
    assert admin.get(f"{EMAILS}{obj.pk}/delete/").status_code == 403
    assert admin.post(f"{EMAILS}{obj.pk}/delete/", {"post": "yes"}).status_code == 403
    assert EmailNotification.objects.filter(pk=obj.pk).exists()


def test_deleting_a_user_still_takes_their_emails_with_them(admin, outbox):
    recipient = outbox[0].recipient
    users = f"/admin/{recipient._meta.app_label}/{recipient._meta.model_name}/"
    response = admin.get(f"{users}{recipient.pk}/delete/")
    assert response.status_code == 200
    assert not response.context["perms_lacking"]
    assert admin.post(f"{users}{recipient.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not EmailNotification.objects.filter(recipient_id=recipient.pk).exists()


def test_anonymous_users_are_sent_to_the_admin_login(client):
    response = client.get(EMAILS)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_the_admin_index_lists_the_outbox(admin):
    assert f'href="{EMAILS}"' in admin.get("/admin/").content.decode()
