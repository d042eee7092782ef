from __future__ import annotations

import factory
import pyotp

from accounts import totp
from accounts.models import FactorStatus, MfaFactor, Passkey, User

DEFAULT_PASSWORD = "correct horse battery staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    username = None
    # Not Faker's names: the password validators refuse a password too like the
    # display name, and a random name now and then came close enough to a
    # test's new password (1 in ~10,000: "Albert Murillo" vs "violet tractor
    # umbrella 42") to fail that test by chance.
    display_name = factory.Sequence(lambda n: f"Member {n}")
    password = factory.django.Password(DEFAULT_PASSWORD)


class MfaFactorFactory(factory.django.DjangoModelFactory):
    """A verified TOTP factor whose secret (`secret=`, random by default) is stored
    as accounts.totp stores it: codes from pyotp.TOTP(secret) verify."""

    class Meta:
        model = MfaFactor

    class Params:
        secret = factory.LazyFunction(pyotp.random_base32)

    user = factory.SubFactory(UserFactory)
    friendly_name = factory.Sequence(lambda n: f"phone {n}")
    status = FactorStatus.VERIFIED
    secret_encrypted = factory.LazyAttribute(lambda factor: totp.secret_encrypt(factor.secret))


class PasskeyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Passkey

    user = factory.SubFactory(UserFactory)
    credential_id = factory.Sequence(lambda n: f"credential-{n}".encode())
    public_key = b"public-key"
    friendly_name = factory.Sequence(lambda n: f"laptop {n}")
    aaguid = "00000000-0000-0000-0000-000000000000"
