"""Hooks only: the platform's email request (velro.signals.email_requested) -> the outbox.

Apps that send email do not import this app: they send the platform signal,
and the outbox records the email in their transaction.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.dispatch import receiver

from notifications.services import email_queue
from velro.signals import email_requested


@receiver(email_requested, dispatch_uid="notifications.outbox.email_requested")
def email_requested_queue(
    sender: object, kind: str, recipient_id: uuid.UUID, event_key: str, context: dict, **kwargs: Any
) -> int | None:
    return email_queue(kind=kind, recipient_id=recipient_id, event_key=event_key, context=context)
