"""The operator's window on referrals and notification emails.

Everything here is read-only: a referral's status and referrer, a code's
credit counter and an email's state are kept consistent by the services
(conditional updates, the counter invariant `credited_count == credited
referrals`). Operators change them only through the actions, which call the
services: re-process / reject a referral, retry a failed email.

Direct deletes from these pages are refused (deleting a credited referral
would leave its referrer's counter wrong until the nightly sync); rows still
go away with their user when an operator deletes the user.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import CharField, F, Func, Q, QuerySet, Value
from django.db.models.functions import Upper
from django.db.models.lookups import Exact
from django.http import HttpRequest

from referrals import services
from referrals.codes import referral_code_normalize
from referrals.models import (
    EmailNotification,
    EmailStatus,
    Referral,
    ReferralCode,
    ReferralIntent,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    """View-only pages (no add, no edit, no direct delete) plus service-backed actions.

    Actions declare `allowed_permissions=("operate",)`: they need the model's
    real change permission, although the change form itself is view-only.
    """

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Refused on this model's own pages; allowed when the row is only part
        # of a cascade (an operator deleting a user), which the admin checks
        # against each related model's admin.
        match = getattr(request, "resolver_match", None)
        own_pages = f"{self.opts.app_label}_{self.opts.model_name}_"
        if match is not None and (match.url_name or "").startswith(own_pages):
            return False
        return super().has_delete_permission(request, obj)


def _search_code(search_term: str) -> str | None:
    """The canonical code an operator may have typed ("abcd-efgh" -> "ABCDEFGH")."""
    term = search_term.strip()
    return referral_code_normalize(term) if term else None


def _normalized(field: str) -> Func:
    """referrals.codes.referral_code_normalize in SQL (PostgreSQL TRANSLATE):
    upper case, O->0, I/L->1, hyphens and spaces dropped."""
    return Func(Upper(F(field)), Value("OIL- "), Value("011"), function="TRANSLATE", output_field=CharField())


@admin.register(Referral)
class ReferralAdmin(ReadOnlyAdmin):
    list_display = ("referred", "referrer", "code", "status", "reason", "created_at", "credited_at")
    list_filter = ("status", "reason", "created_at")
    search_fields = ("referrer__email", "referred__email", "code")
    list_select_related = ("referrer", "referred")
    ordering = ("-created_at",)
    fields = ("id", "referrer", "referred", "code", "status", "reason", "created_at", "updated_at", "credited_at")
    readonly_fields = fields
    actions = ["reprocess_selected", "reject_selected"]

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Referral], search_term: str
    ) -> tuple[QuerySet[Referral], bool]:
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        code = _search_code(search_term)
        if code:
            # A code in any spelling finds the referrals made with it: the
            # referrer's canonical code, or the code as the new user typed it
            # (in any spelling too, e.g. an unknown "zzzz-zzzz").
            results = results | queryset.filter(
                Q(referrer__referral_code__code=code) | Q(Exact(_normalized("code"), Value(code)))
            )
        return results, may_have_duplicates

    @admin.action(description="Re-process selected referrals (validate the code again)", permissions=["operate"])
    def reprocess_selected(self, request: HttpRequest, queryset: QuerySet[Referral]) -> None:
        before = {row["pk"]: row for row in queryset.values("pk", "status", "reason", "referrer_id")}
        outcomes = Counter(services.referral_reprocess(referral_id=pk) for pk in before)
        after = Referral.objects.filter(pk__in=before).values("pk", "status", "reason", "referrer_id")
        changed = sum(row != before[row["pk"]] for row in after)
        detail = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
        self.message_user(
            request,
            f"Re-processed {len(before)} referral(s): {changed} changed ({detail}).",
            messages.SUCCESS if changed else messages.INFO,
        )

    @admin.action(
        description="Reject selected referrals (a credited one gives its credit back)", permissions=["operate"]
    )
    def reject_selected(self, request: HttpRequest, queryset: QuerySet[Referral]) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        changed = sum(services.referral_reject(referral_id=pk) for pk in ids)
        unchanged = len(ids) - changed
        suffix = f" ({unchanged} already rejected)" if unchanged else ""
        self.message_user(
            request, f"Rejected {changed} referral(s){suffix}.", messages.SUCCESS if changed else messages.INFO
        )


@admin.register(ReferralIntent)
class ReferralIntentAdmin(ReadOnlyAdmin):
    list_display = ("referred", "code", "status", "attempts", "created_at", "processed_at")
    list_filter = ("status", "created_at")
    search_fields = ("referred__email", "code")
    list_select_related = ("referred",)
    ordering = ("-created_at",)
    fields = ("id", "referred", "code", "status", "attempts", "created_at", "processed_at")
    readonly_fields = fields


@admin.register(EmailNotification)
class EmailNotificationAdmin(ReadOnlyAdmin):
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
        from referrals.tasks import send_email
        from velro.tasks import enqueue_on_commit

        # "Failed" also covers a row still pending that has used up its
        # attempts: the sweeper no longer picks it up either.
        retryable = Q(status=EmailStatus.FAILED) | Q(
            status=EmailStatus.PENDING, attempts__gte=settings.EMAIL_MAX_ATTEMPTS
        )
        ids = list(queryset.filter(retryable).values_list("pk", flat=True))
        # Conditional: a row that changed since the page was rendered is left alone.
        changed = EmailNotification.objects.filter(retryable, pk__in=ids).update(
            status=EmailStatus.PENDING, attempts=0, claimed_at=None
        )
        for notification_id in ids:
            enqueue_on_commit(send_email, notification_id)  # a nudge; the sweeper is the guarantee
        skipped = len(queryset) - changed
        suffix = f" ({skipped} not failed, left alone)" if skipped else ""
        self.message_user(
            request,
            f"Queued {changed} email(s) for another attempt{suffix}.",
            messages.SUCCESS if changed else messages.INFO,
        )


@admin.register(ReferralCode)
class ReferralCodeAdmin(ReadOnlyAdmin):
    list_display = ("code", "user", "credited_count", "created_at")
    search_fields = ("code", "user__email")
    list_select_related = ("user",)
    ordering = ("-created_at",)
    fields = ("code", "user", "credited_count", "created_at")
    readonly_fields = fields

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[ReferralCode], search_term: str
    ) -> tuple[QuerySet[ReferralCode], bool]:
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        code = _search_code(search_term)
        if code:
            results = results | queryset.filter(code=code)
        return results, may_have_duplicates
