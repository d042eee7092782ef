"""Outbox test data: raw rows, to set up a state directly (e.g. a half-done send)."""

from __future__ import annotations

import factory
from django.conf import settings

from notifications.models import EmailKind, EmailNotification


class RecipientFactory(factory.django.DjangoModelFactory):
    """A user (the recipient), through the user model alone: this app knows no other."""

    class Meta:
        model = settings.AUTH_USER_MODEL
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"recipient{n}@example.com")
    display_name = factory.Faker("name")
    password = "!"  # no usable password: nobody logs in here


class EmailNotificationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = EmailNotification

    recipient = factory.SubFactory(RecipientFactory)
    kind = EmailKind.WELCOME
    event_key = factory.LazyAttribute(lambda o: f"{o.kind}:{o.recipient.pk}")
    context = factory.LazyAttribute(lambda o: {"name": o.recipient.display_name or o.recipient.email})
