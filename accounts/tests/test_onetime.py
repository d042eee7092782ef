"""One-time tokens (accounts.onetime): hashed, expiring, single use, bound to purpose and address."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import OneTimeToken
from accounts.models import OneTimeTokenPurpose as Purpose
from accounts.onetime import (
    EmailSendTooSoon,
    OneTimeTokenInvalid,
    ott_claim,
    ott_consume,
    ott_find,
    ott_issue,
    ott_prune,
    send_interval_check,
)
from accounts.tests.factories import UserFactory
from accounts.tests.support import code_in, link_in, mail_to
from notifications.models import EmailNotification
from notifications.tests.support import _enqueue_breaker_closed, celery_worker, smtp_server  # noqa: F401

pytestmark = pytest.mark.django_db


def _issue(user, purpose=Purpose.RECOVERY, **kwargs):
    return ott_issue(user=user, purpose=purpose, sent_to=user.email, **kwargs)


def test_a_code_signs_for_its_address_and_purpose_once():
    user = UserFactory(email="once@example.com")
    issued = _issue(user)
    assert len(issued.code) == 6 and issued.code.isdigit()
    token = ott_consume(purposes=[Purpose.RECOVERY], email="ONCE@example.com", code=issued.code)
    assert token.user == user
    with pytest.raises(OneTimeTokenInvalid):
        ott_consume(purposes=[Purpose.RECOVERY], email=user.email, code=issued.code)


def test_a_link_token_signs_once_and_neither_secret_is_stored():
    user = UserFactory()
    issued = _issue(user, purpose=Purpose.MAGICLINK)
    row = OneTimeToken.objects.get(pk=issued.token.pk)
    stored = " ".join(str(value) for value in row.__dict__.values())
    assert issued.code not in stored and issued.link_token not in stored
    outbox = EmailNotification.objects.get(event_key=f"ott:{row.pk}")
    assert issued.code not in str(outbox.context) and issued.link_token not in str(outbox.context)
    assert ott_consume(purposes=[Purpose.MAGICLINK], token_hash=issued.link_token).pk == row.pk
    with pytest.raises(OneTimeTokenInvalid):
        ott_consume(purposes=[Purpose.MAGICLINK], token_hash=issued.link_token)


def test_a_token_is_refused_for_another_purpose_or_address():
    user = UserFactory()
    other = UserFactory()
    issued = _issue(user, purpose=Purpose.SIGNUP)
    with pytest.raises(OneTimeTokenInvalid):
        ott_consume(purposes=[Purpose.RECOVERY], email=user.email, code=issued.code)
    with pytest.raises(OneTimeTokenInvalid):
        ott_consume(purposes=[Purpose.SIGNUP], email=other.email, code=issued.code)
    with pytest.raises(OneTimeTokenInvalid):
        ott_consume(purposes=[Purpose.RECOVERY], token_hash=issued.link_token)
    assert ott_consume(purposes=[Purpose.SIGNUP], email=user.email, code=issued.code).user == user


def test_an_expired_token_is_refused():
    user = UserFactory()
    issued = _issue(user, now=timezone.now() - timedelta(seconds=3601))
    with pytest.raises(OneTimeTokenInvalid):
        ott_consume(purposes=[Purpose.RECOVERY], email=user.email, code=issued.code)


def test_a_new_token_replaces_the_older_unused_one_of_its_purpose():
    user = UserFactory()
    first = _issue(user)
    reauth = _issue(user, purpose=Purpose.REAUTHENTICATION)
    second = _issue(user)
    with pytest.raises(OneTimeTokenInvalid):
        ott_consume(purposes=[Purpose.RECOVERY], email=user.email, code=first.code)
    assert ott_consume(purposes=[Purpose.RECOVERY], email=user.email, code=second.code)
    assert ott_consume(purposes=[Purpose.REAUTHENTICATION], email=user.email, code=reauth.code)


def test_wrong_codes_use_up_the_token_after_the_allowed_attempts(settings):
    settings.OTT_MAX_ATTEMPTS = 3
    user = UserFactory()
    issued = _issue(user)
    wrong = f"{(int(issued.code) + 1) % 10**6:06d}"
    for _ in range(3):
        with pytest.raises(OneTimeTokenInvalid):
            ott_consume(purposes=[Purpose.RECOVERY], email=user.email, code=wrong)
    with pytest.raises(OneTimeTokenInvalid):
        ott_consume(purposes=[Purpose.RECOVERY], email=user.email, code=issued.code)


def test_of_two_verifies_that_both_found_the_token_exactly_one_claims_it():
    user = UserFactory()
    issued = _issue(user)
    # The interleaving forced: both read the live token before either claims it.
    first = ott_find(purposes=[Purpose.RECOVERY], email=user.email, code=issued.code)
    second = ott_find(purposes=[Purpose.RECOVERY], email=user.email, code=issued.code)
    ott_claim(token=first)
    with pytest.raises(OneTimeTokenInvalid):
        ott_claim(token=second)
    assert OneTimeToken.objects.filter(pk=issued.token.pk, used_at__isnull=False).count() == 1


def test_a_second_email_to_an_address_within_the_interval_is_refused_known_or_not(settings):
    settings.GOTRUE_SMTP_MAX_FREQUENCY = 60
    send_interval_check(address="someone@example.com", group="recovery", now=1000.0)
    with pytest.raises(EmailSendTooSoon) as refused:
        send_interval_check(address="SOMEONE@example.com", group="recovery", now=1010.0)
    assert refused.value.code == "over_email_send_rate_limit"
    send_interval_check(address="someone@example.com", group="magiclink", now=1010.0)  # another purpose


def test_tokens_expired_for_a_day_are_pruned_and_live_ones_kept():
    user = UserFactory()
    old = _issue(user, now=timezone.now() - timedelta(days=2))
    live = _issue(user, purpose=Purpose.MAGICLINK)
    assert ott_prune() == 1
    assert list(OneTimeToken.objects.values_list("pk", flat=True)) == [live.token.pk]
    assert old.token.pk != live.token.pk


def test_the_prune_runs_hourly_on_the_beat_schedule(settings):
    entries = {entry["task"]: entry["schedule"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert entries["accounts.prune_one_time_tokens"] == 3600.0


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_the_worker_sends_the_code_and_the_link_the_token_accepts(smtp_server, celery_worker):  # noqa: F811
    celery_worker()
    user = UserFactory(email="mailed@example.com")
    issued = _issue(user, purpose=Purpose.MAGICLINK)
    message = mail_to(smtp_server, "mailed@example.com")
    assert message["Subject"] == "Your Velro sign-in code"
    assert code_in(message) == issued.code
    assert f"token={issued.link_token}&type=magiclink" in link_in(message)
    html = next(part for part in message.walk() if part.get_content_type() == "text/html")
    assert issued.code in html.get_payload(decode=True).decode()
