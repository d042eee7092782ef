"""The official JavaScript client's MFA API (@supabase/auth-js: auth.mfa.*) against the live test server.

Scenarios: the "MFA (TOTP)" block at the end of js/run.mjs. A run enrolls and hands back the
secret and its session; the test computes the codes (pyotp) and passes them to the next run.
"""

from __future__ import annotations

import pytest

from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import ANON_KEY, STRONGER, run_authjs, supabase_project, totp_code

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _supabase_settings(settings):
    supabase_project(settings)


@pytest.fixture
def authjs(live_server):
    def _run(scenario: str, **args) -> dict:
        return run_authjs(scenario, url=f"{live_server.url}/auth/v1", apikey=ANON_KEY, **args)

    return _run


def enrolled(authjs, email: str) -> dict:
    UserFactory(email=email)
    result = authjs("mfaEnroll", email=email, password=DEFAULT_PASSWORD, friendlyName="phone")
    assert result["enroll"]["error"] is None, result
    return result


def wrong_code(secret: str) -> str:
    current = {totp_code(secret, steps=steps) for steps in (-1, 0, 1)}
    return next(code for code in ("000000", "111111", "222222", "333333") if code not in current)


def test_enroll_verify_reach_aal2_and_what_aal1_may_not_do(authjs):
    enrollment = enrolled(authjs, "js-mfa@example.com")
    assert enrollment["before"] == {
        "currentLevel": "aal1",
        "nextLevel": "aal1",
        "currentAuthenticationMethods": [
            {"method": "password", "timestamp": enrollment["before"]["currentAuthenticationMethods"][0]["timestamp"]}
        ],
    }
    assert enrollment["qrCode"].startswith("data:image/svg+xml;utf-8,<svg")
    assert enrollment["enroll"]["type"] == "totp" and enrollment["enroll"]["friendlyName"] == "phone"
    assert [f["status"] for f in enrollment["listed"]["all"]] == ["unverified"] and enrollment["listed"]["totp"] == []
    secret, factor_id = enrollment["secret"], enrollment["enroll"]["id"]

    result = authjs(
        "mfaVerify",
        session=enrollment["session"],
        factorId=factor_id,
        code=totp_code(secret),
        wrongCode=wrong_code(secret),
        email="js-mfa@example.com",
        password=DEFAULT_PASSWORD,
        newPassword=STRONGER,
        newEmail="js-new@example.com",
    )
    assert result["verify"]["error"] is None
    assert len(result["verify"]["recoveryCodes"]) == 10  # the first second factor: shown once
    assert result["verifiedClaims"] == {"aal": "aal2", "amr": ["password", "totp"]}
    assert (result["replay"]["status"], result["replay"]["code"]) == (422, "mfa_verification_failed")
    assert (result["wrong"]["status"], result["wrong"]["code"]) == (422, "mfa_verification_failed")
    for level in (result["level"], result["levelFromJwt"]):
        assert (level["currentLevel"], level["nextLevel"]) == ("aal2", "aal2")
    assert result["verifiedTotp"] == [factor_id]
    assert result["refreshedClaims"]["aal"] == "aal2"
    assert (result["otherLevel"]["currentLevel"], result["otherLevel"]["nextLevel"]) == ("aal1", "aal2")
    for refused in (result["otherPassword"], result["otherEmail"]):
        assert (refused["status"], refused["code"]) == (403, "insufficient_aal")
    assert (result["otherUnenroll"]["status"], result["otherUnenroll"]["code"]) == (422, "insufficient_aal")

    after = authjs(
        "mfaUnenroll",
        session=result["session"],
        factorId=factor_id,
        password=DEFAULT_PASSWORD,
        newPassword=STRONGER,
    )
    assert after["password"] is None
    assert after["unenroll"] == {"error": None, "id": factor_id}
    assert (after["level"]["currentLevel"], after["level"]["nextLevel"]) == ("aal1", "aal1")
    assert after["factors"] == []


def test_verify_attempts_are_rate_limited(authjs, settings):
    settings.RATELIMIT_ENABLE = True
    settings.RATELIMIT_MFA_VERIFY_FACTOR = (2, 60)
    enrollment = enrolled(authjs, "js-limit@example.com")
    secret = enrollment["secret"]
    result = authjs(
        "mfaVerifyAttempts",
        session=enrollment["session"],
        factorId=enrollment["enroll"]["id"],
        codes=[wrong_code(secret), wrong_code(secret), totp_code(secret)],
    )
    assert [error["code"] for error in result["errors"]] == [
        "mfa_verification_failed",
        "mfa_verification_failed",
        "over_request_rate_limit",
    ]
    assert result["errors"][2]["status"] == 429
