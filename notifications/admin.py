"""The operator's window on the email outbox: read-only, plus a service-backed retry action.

Direct deletes from these pages are refused; rows still go away with their
recipient when an operator deletes the user.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from notifications import services
from notifications.models import EmailNotification
from velro.admin import ReadOnlyAdmin


@admin.register(EmailNotification)
class EmailNotificationAdmin(ReadOnlyAdmin):
    """View-only (no add, no edit, no direct delete); the retry action needs the
    model's real change permission (`allowed_permissions=("operate",)`)."""

    list_display = (
        "event_key",
        "kind",
        "recipient",
        "status",
        "attempts",
        "last_error",
        "created_at",
        "sent_at",
    )
    list_filter = ("status", "kind", "created_at")
    search_fields = ("event_key", "recipient__email")
    list_select_related = ("recipient",)
    ordering = ("-created_at",)
    fields = (
        "id",
        "event_key",
        "kind",
        "recipient",
        "context",
        "status",
        "attempts",
        "last_error",
        "created_at",
        "claimed_at",
        "sent_at",
    )
    readonly_fields = fields
    actions = ["retry_failed"]

    @admin.action(
        description="Retry failed emails (back to pending, attempts reset; the sweeper sends them)",
        permissions=["operate"],
    )
    def retry_failed(self, request: HttpRequest, queryset: QuerySet[EmailNotification]) -> None:
        changed = services.emails_retry(notification_ids=list(queryset.values_list("pk", flat=True)))
        skipped = len(queryset) - changed
        suffix = f" ({skipped} not failed, left alone)" if skipped else ""
        self.message_user(
            request,
            f"Queued {changed} email(s) for another attempt{suffix}.",
            messages.SUCCESS if changed else messages.INFO,
        )
