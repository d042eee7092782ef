from __future__ import annotations

import factory

from accounts.models import FactorStatus, MfaFactor, Passkey, User

DEFAULT_PASSWORD = "correct horse battery staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    username = None
    display_name = factory.Faker("name")
    password = factory.django.Password(DEFAULT_PASSWORD)


class MfaFactorFactory(factory.django.DjangoModelFactory):
    """A verified TOTP factor. Its secret is not set: tests that need a working
    code enroll through the API (accounts.totp encrypts the secret)."""

    class Meta:
        model = MfaFactor

    user = factory.SubFactory(UserFactory)
    friendly_name = factory.Sequence(lambda n: f"phone {n}")
    status = FactorStatus.VERIFIED


class PasskeyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Passkey

    user = factory.SubFactory(UserFactory)
    credential_id = factory.Sequence(lambda n: f"credential-{n}".encode())
    public_key = b"public-key"
    friendly_name = factory.Sequence(lambda n: f"laptop {n}")
    aaguid = "00000000-0000-0000-0000-000000000000"
