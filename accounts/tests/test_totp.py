"""TOTP services (accounts/totp.py): secrets at rest, codes accepted once, challenges, limits."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from django.utils import timezone

from accounts import mfa, recovery, services, totp
from accounts.models import FactorStatus, MfaChallenge, MfaFactor, RecoveryCode, Session
from accounts.tests.factories import UserFactory
from accounts.tests.support import totp_code

pytestmark = pytest.mark.django_db

IP = "198.51.100.7"


def session_of(user) -> services.IssuedTokens:
    return services.session_start(user=user, ip=IP, user_agent="test")


def enrolled(user, session_id=None, name: str = "phone") -> totp.Enrollment:
    return totp.factor_enroll(user=user, friendly_name=name, session_id=session_id)


def verify(user, enrollment: totp.Enrollment, session_id, *, code: str | None = None, **kwargs) -> totp.Verification:
    challenge = totp.factor_challenge(user_id=user.pk, factor_id=enrollment.factor.pk, ip=IP)
    return totp.factor_verify(
        user=user,
        factor_id=enrollment.factor.pk,
        challenge_id=challenge.pk,
        code=code if code is not None else totp_code(enrollment.secret),
        session_id=session_id,
        ip=IP,
        **kwargs,
    )


def test_the_row_holds_no_plaintext_secret():
    user = UserFactory()
    enrollment = enrolled(user)
    row = MfaFactor.objects.get(pk=enrollment.factor.pk)
    assert enrollment.secret not in row.secret_encrypted
    assert enrollment.secret.lower() not in row.secret_encrypted.lower()
    assert totp.secret_decrypt(row.secret_encrypted) == (enrollment.secret, None)
    assert f"secret={enrollment.secret}" in enrollment.uri and enrollment.uri.startswith("otpauth://totp/")
    assert enrollment.qr_svg.startswith("<svg") and "#" not in enrollment.qr_svg


def test_a_secret_under_an_older_key_still_verifies_and_is_rewritten_under_the_new_one(settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.MFA_ENCRYPTION_KEYS = [old]
    user = UserFactory()
    enrollment = enrolled(user)
    settings.MFA_ENCRYPTION_KEYS = [new, old]
    verify(user, enrollment, session_of(user).session_id)
    row = MfaFactor.objects.get(pk=enrollment.factor.pk)
    assert Fernet(new.encode()).decrypt(row.secret_encrypted.encode()).decode() == enrollment.secret


def test_a_verified_code_raises_the_session_to_aal2_and_verifies_the_factor():
    user = UserFactory()
    login = session_of(user)
    enrollment = enrolled(user, login.session_id)
    verification = verify(user, enrollment, login.session_id)
    assert verification.first and verification.tokens.session_id == login.session_id
    assert verification.tokens.aal == "aal2"
    assert [entry["method"] for entry in verification.tokens.amr] == ["password", "totp"]
    assert verification.tokens.refresh_token != login.refresh_token
    session = Session.objects.get(pk=login.session_id)
    assert (session.aal, session.factor_id) == ("aal2", enrollment.factor.pk)
    assert MfaFactor.objects.get(pk=enrollment.factor.pk).status == FactorStatus.VERIFIED
    assert services.session_refresh(refresh_token=verification.tokens.refresh_token).aal == "aal2"


def test_a_replayed_code_is_refused():
    user = UserFactory()
    login = session_of(user)
    enrollment = enrolled(user, login.session_id)
    code = totp_code(enrollment.secret)
    verify(user, enrollment, login.session_id, code=code)
    reasons = []
    with pytest.raises(totp.VerificationFailed):
        verify(user, enrollment, login.session_id, code=code, on_failure=lambda factor, reason: reasons.append(reason))
    assert reasons == ["replay"]


def test_a_code_of_an_earlier_step_than_the_last_accepted_is_refused():
    user = UserFactory()
    login = session_of(user)
    enrollment = enrolled(user, login.session_id)
    verify(user, enrollment, login.session_id)
    with pytest.raises(totp.VerificationFailed):
        verify(user, enrollment, login.session_id, code=totp_code(enrollment.secret, steps=-1))


def test_the_previous_and_next_steps_are_accepted_and_two_steps_away_is_not():
    user = UserFactory()
    login = session_of(user)
    enrollment = enrolled(user, login.session_id)
    with pytest.raises(totp.VerificationFailed):
        verify(user, enrollment, login.session_id, code=totp_code(enrollment.secret, steps=-2))
    verify(user, enrollment, login.session_id, code=totp_code(enrollment.secret, steps=-1))
    verify(user, enrollment, login.session_id, code=totp_code(enrollment.secret, steps=1))


@pytest.mark.parametrize("code", ["000000", "12345", "abcdef", "1234567", ""])
def test_a_wrong_code_is_refused_and_reported(code):
    user = UserFactory()
    login = session_of(user)
    enrollment = enrolled(user, login.session_id)
    if code == totp_code(enrollment.secret):
        code = "999999" if code != "999999" else "111111"
    reasons = []
    with pytest.raises(totp.VerificationFailed):
        verify(user, enrollment, login.session_id, code=code, on_failure=lambda factor, reason: reasons.append(reason))
    assert reasons == ["wrong_code"]
    assert MfaFactor.objects.get(pk=enrollment.factor.pk).status == FactorStatus.UNVERIFIED
    assert Session.objects.get(pk=login.session_id).aal == "aal1"


def test_an_expired_challenge_is_refused_and_deleted(settings):
    user = UserFactory()
    login = session_of(user)
    enrollment = enrolled(user, login.session_id)
    asked = timezone.now() - timedelta(seconds=settings.MFA_CHALLENGE_EXPIRY_DURATION + 1)
    challenge = totp.factor_challenge(user_id=user.pk, factor_id=enrollment.factor.pk, ip=IP, now=asked)
    with pytest.raises(totp.ChallengeExpired):
        totp.factor_verify(
            user=user,
            factor_id=enrollment.factor.pk,
            challenge_id=challenge.pk,
            code=totp_code(enrollment.secret),
            session_id=login.session_id,
            ip=IP,
        )
    assert not MfaChallenge.objects.filter(pk=challenge.pk).exists()


def test_a_challenge_is_verified_once_and_only_from_its_address():
    user = UserFactory()
    login = session_of(user)
    enrollment = enrolled(user, login.session_id)
    challenge = totp.factor_challenge(user_id=user.pk, factor_id=enrollment.factor.pk, ip=IP)
    with pytest.raises(totp.ChallengeUnusable):
        totp.factor_verify(
            user=user,
            factor_id=enrollment.factor.pk,
            challenge_id=challenge.pk,
            code=totp_code(enrollment.secret),
            session_id=login.session_id,
            ip="203.0.113.9",
        )
    args = {"user": user, "factor_id": enrollment.factor.pk, "challenge_id": challenge.pk}
    totp.factor_verify(**args, code=totp_code(enrollment.secret), session_id=login.session_id, ip=IP)
    with pytest.raises(totp.ChallengeUnusable):
        totp.factor_verify(**args, code=totp_code(enrollment.secret, steps=1), session_id=login.session_id, ip=IP)


def test_another_users_factor_is_not_found():
    owner, other = UserFactory(), UserFactory()
    enrollment = enrolled(owner)
    with pytest.raises(totp.FactorNotFound):
        totp.factor_challenge(user_id=other.pk, factor_id=enrollment.factor.pk, ip=IP)
    with pytest.raises(totp.FactorNotFound):
        totp.factor_unenroll(user_id=other.pk, factor_id=enrollment.factor.pk, session_id=None)


def test_friendly_names_are_unique_per_user_and_blank_ones_never_clash():
    user = UserFactory()
    enrolled(user, name="phone")
    with pytest.raises(totp.FactorNameConflict):
        enrolled(user, name="phone")
    enrolled(user, name="")
    enrolled(user, name="")
    enrolled(UserFactory(), name="phone")


def test_at_most_the_enrolled_factor_limit(settings):
    settings.MFA_MAX_ENROLLED_FACTORS = 2
    user = UserFactory()
    enrolled(user, name="a")
    enrolled(user, name="b")
    with pytest.raises(totp.TooManyFactors):
        enrolled(user, name="c")


def test_unverified_factors_never_challenged_expire_at_the_next_enrollment(settings):
    settings.MFA_MAX_ENROLLED_FACTORS = 1
    user = UserFactory()
    abandoned = enrolled(user, name="a")
    MfaFactor.objects.filter(pk=abandoned.factor.pk).update(
        created_at=timezone.now() - timedelta(seconds=settings.MFA_FACTOR_EXPIRY_DURATION + 1)
    )
    enrolled(user, name="b")
    assert list(MfaFactor.objects.filter(user=user).values_list("friendly_name", flat=True)) == ["b"]


def test_enrolling_another_factor_needs_an_aal2_session_once_one_is_verified():
    user = UserFactory()
    login = session_of(user)
    first = enrolled(user, login.session_id, name="a")
    verify(user, first, login.session_id)
    other = session_of(user)  # aal1
    with pytest.raises(mfa.InsufficientAal):
        enrolled(user, other.session_id, name="b")
    enrolled(user, login.session_id, name="b")


def test_the_first_verified_factor_makes_recovery_codes_once():
    user = UserFactory()
    login = session_of(user)
    first = enrolled(user, login.session_id, name="a")
    verification = verify(user, first, login.session_id)
    assert len(verification.recovery_codes) == recovery.CODE_COUNT
    assert RecoveryCode.objects.filter(user=user).count() == recovery.CODE_COUNT
    second = enrolled(user, login.session_id, name="b")
    assert verify(user, second, login.session_id).recovery_codes == []
    assert verify(user, second, login.session_id, code=totp_code(second.secret, steps=1)).first is False


def test_a_verify_ends_the_users_other_aal1_sessions_and_drops_unverified_factors():
    user = UserFactory()
    login, elsewhere = session_of(user), session_of(user)
    abandoned = enrolled(user, login.session_id, name="abandoned")
    enrollment = enrolled(user, login.session_id, name="kept")
    verify(user, enrollment, login.session_id)
    assert Session.objects.get(pk=elsewhere.session_id).revoked_at is not None
    assert Session.objects.get(pk=login.session_id).revoked_at is None
    assert not MfaFactor.objects.filter(pk=abandoned.factor.pk).exists()


def test_unenrolling_a_verified_factor_needs_aal2_and_lowers_the_sessions_it_raised():
    user = UserFactory()
    login = session_of(user)
    enrollment = enrolled(user, login.session_id)
    verify(user, enrollment, login.session_id)
    aal1 = session_of(user)
    with pytest.raises(totp.UnenrollNeedsAal2):
        totp.factor_unenroll(user_id=user.pk, factor_id=enrollment.factor.pk, session_id=aal1.session_id)
    totp.factor_unenroll(user_id=user.pk, factor_id=enrollment.factor.pk, session_id=login.session_id)
    session = Session.objects.get(pk=login.session_id)
    assert (session.aal, session.factor_id) == ("aal1", None)
    assert [entry["method"] for entry in session.amr] == ["password"]
    assert not RecoveryCode.objects.filter(user=user).exists()  # no second factor left
    assert not mfa.user_has_second_factor(user_id=user.pk)


def test_an_unverified_factor_is_unenrolled_at_aal1():
    user = UserFactory()
    login = session_of(user)
    enrollment = enrolled(user, login.session_id)
    totp.factor_unenroll(user_id=user.pk, factor_id=enrollment.factor.pk, session_id=login.session_id)
    assert not MfaFactor.objects.filter(user=user).exists()


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_two_verifies_racing_with_one_code_one_wins(monkeypatch):
    """Both pass every check (same code, two challenges) before either claims the
    step: the hook holds each at the claim until both are there."""
    user = UserFactory()
    login = session_of(user)
    enrollment = enrolled(user, login.session_id)
    code = totp_code(enrollment.secret)
    challenges = [totp.factor_challenge(user_id=user.pk, factor_id=enrollment.factor.pk, ip=IP) for _ in range(2)]
    at_claim = threading.Barrier(2, timeout=10)
    monkeypatch.setattr(totp, "before_claim", at_claim.wait)
    outcomes: list = [None, None]

    def attempt(index: int) -> None:
        from django.db import connection

        try:
            totp.factor_verify(
                user=user,
                factor_id=enrollment.factor.pk,
                challenge_id=challenges[index].pk,
                code=code,
                session_id=login.session_id,
                ip=IP,
            )
            outcomes[index] = "verified"
        except totp.VerificationFailed:
            outcomes[index] = "refused"
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert sorted(outcomes) == ["refused", "verified"]
    assert MfaChallenge.objects.filter(factor_id=enrollment.factor.pk, verified_at__isnull=False).count() == 1
