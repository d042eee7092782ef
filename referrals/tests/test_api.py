"""GET /api/v1/referrals/me: the caller's code, counts by status, the people they referred (paginated)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.tests.factories import UserFactory
from referrals.models import Referral, ReferralStatus
from referrals.tests.factories import ReferralFactory, code_of, refer, refer_rejected

pytestmark = pytest.mark.django_db(transaction=False)

URL = "/api/v1/referrals/me"


@pytest.fixture
def referrals(user):
    """`user` referred three people who were credited and one an operator rejected;
    someone else's referral and an unknown-code signup are not theirs."""
    made = [refer(user, display_name=f"Friend {i}") for i in range(3)]
    made.append(refer_rejected(user, display_name="Rejected Friend"))
    refer(UserFactory(), display_name="Not Yours")
    refer(None, code="ZZZZZZZZ", display_name="Unknown Code")
    return made


def result_of(referral: Referral) -> dict:
    referred = referral.referred
    return {
        "id": str(referred.pk),
        "display_name": referred.display_name,
        "joined": referred.date_joined.isoformat().replace("+00:00", "Z"),
        "status": referral.status,
    }


def test_me_lists_the_callers_code_counts_and_referred_users(auth_api, user, referrals):
    response = auth_api.get(URL)
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"code", "counts", "count", "next", "previous", "results"}
    assert body["code"] == code_of(user)
    assert body["counts"] == {"pending": 0, "credited": 3, "rejected": 1}
    assert body["count"] == 4
    assert body["next"] is None
    assert body["previous"] is None
    newest_first = sorted(referrals, key=lambda r: r.created_at, reverse=True)
    assert body["results"] == [result_of(r) for r in newest_first]
    assert {r["display_name"] for r in body["results"]} == {"Friend 0", "Friend 1", "Friend 2", "Rejected Friend"}


def test_results_carry_only_what_the_referrer_may_see(auth_api, referrals):
    for row in auth_api.get(URL).json()["results"]:
        assert set(row) == {"id", "display_name", "joined", "status"}  # no email, no code, no reason


def test_a_pending_referral_counts_as_pending(auth_api, user):
    ReferralFactory(referrer=user, referred=UserFactory(display_name="Soon"))
    body = auth_api.get(URL).json()
    assert body["counts"] == {"pending": 1, "credited": 0, "rejected": 0}
    assert [r["status"] for r in body["results"]] == ["pending"]


def test_a_user_with_no_referrals_gets_zero_counts_and_no_results(auth_api, user):
    response = auth_api.get(URL)
    assert response.status_code == 200
    assert response.json() == {
        "code": code_of(user),
        "counts": {"pending": 0, "credited": 0, "rejected": 0},
        "count": 0,
        "next": None,
        "previous": None,
        "results": [],
    }


def test_pages_follow_the_next_and_previous_links(auth_api, referrals):
    first = auth_api.get(URL, {"page_size": 2}).json()
    assert first["count"] == 4
    assert len(first["results"]) == 2
    assert first["previous"] is None
    assert first["next"] and "page=2" in first["next"] and "page_size=2" in first["next"]
    assert first["counts"] == {"pending": 0, "credited": 3, "rejected": 1}  # counts are over all pages

    second = auth_api.get(first["next"]).json()
    assert len(second["results"]) == 2
    assert second["next"] is None
    assert second["previous"]
    assert auth_api.get(second["previous"]).json()["results"] == first["results"]

    seen = [r["id"] for r in first["results"] + second["results"]]
    assert len(set(seen)) == 4
    assert set(seen) == {str(r.referred_id) for r in referrals}


@pytest.mark.parametrize("page", ["3", "999", "0", "-1", "abc", "1.5"])
def test_a_page_out_of_range_or_malformed_is_a_404_json_not_a_500(auth_api, referrals, page):
    response = auth_api.get(URL, {"page_size": 2, "page": page})
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"] == "not_found"


def test_page_last_is_the_last_page(auth_api, referrals):
    body = auth_api.get(URL, {"page_size": 3, "page": "last"}).json()
    assert len(body["results"]) == 1
    assert body["next"] is None


def test_page_size_is_capped_at_100(auth_api, user, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # 101 users, fast
    for referred in UserFactory.create_batch(101):
        ReferralFactory(referrer=user, referred=referred, status=ReferralStatus.CREDITED)
    body = auth_api.get(URL, {"page_size": 1000}).json()
    assert body["count"] == 101
    assert len(body["results"]) == 100
    assert body["next"]
    assert len(auth_api.get(body["next"]).json()["results"]) == 1


@pytest.mark.parametrize("page_size", ["0", "-5", "abc"])
def test_a_bad_page_size_falls_back_to_the_default(auth_api, referrals, page_size):
    response = auth_api.get(URL, {"page_size": page_size})
    assert response.status_code == 200
    assert len(response.json()["results"]) == 4


def test_the_query_count_does_not_grow_with_the_page(auth_api, user):
    for _ in range(2):
        refer(user)
    auth_api.get(URL)  # warm the token cache
    with CaptureQueriesContext(connection) as two:
        auth_api.get(URL)
    for _ in range(6):
        refer(user)
    with CaptureQueriesContext(connection) as eight:
        body = auth_api.get(URL).json()
    assert len(body["results"]) == 8
    assert len(eight.captured_queries) == len(two.captured_queries) <= 4


def test_unauthenticated_is_a_401(api):
    response = api.get(URL)
    assert response.status_code == 401
    assert response.json()["error"] in {"not_authenticated", "invalid_token"}


def test_a_bad_token_is_a_401(api):
    api.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    response = api.get(URL)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"


def test_only_get_is_allowed(auth_api):
    response = auth_api.post(URL, {}, format="json")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
