from __future__ import annotations

import factory

from accounts.models import User

DEFAULT_PASSWORD = "correct horse battery staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    username = None
    display_name = factory.Faker("name")
    password = factory.django.Password(DEFAULT_PASSWORD)
