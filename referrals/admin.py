"""The operator's window on referrals, and the referral part of the user page.

Everything here is read-only: a referral's status and referrer and a code's
credit counter are kept consistent by the services (conditional updates, the
counter invariant `credited_count == credited referrals`). Operators change
them only through the actions, which call the services: re-process / reject a
referral. (The email outbox has its own page: notifications/admin.py.)

The user page (accounts/admin.py) shows the user's code, counter, referrals
and referrer: this module registers accounts' UserAdmin extended with them.

Direct deletes from these pages are refused (deleting a credited referral
would leave its referrer's counter wrong until the nightly sync); rows still
go away with their user when an operator deletes the user.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.contrib import admin, messages
from django.db.models import CharField, F, Func, Q, QuerySet, Value
from django.db.models.functions import Upper
from django.db.models.lookups import Exact
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from accounts.admin import UserAdmin as AccountsUserAdmin
from accounts.models import User
from referrals import services
from referrals.codes import referral_code_normalize
from referrals.models import Referral, ReferralCode, ReferralIntent
from referrals.selectors import referral_counts
from velro.admin import ReadOnlyAdmin


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


# --- the user page ------------------------------------------------------------------------------


class ReferralsMadeInline(admin.TabularInline):
    """The people this user referred. View-only: statuses change through the
    Referral admin's actions, which keep the credit counter right."""

    model = Referral
    fk_name = "referrer"
    extra = 0
    can_delete = False
    fields = ("referred", "code", "status", "reason", "created_at", "credited_at")
    readonly_fields = fields
    ordering = ("-created_at",)
    show_change_link = True
    verbose_name = "referral made"
    verbose_name_plural = "referrals made"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Referral]:
        return super().get_queryset(request).select_related("referred")


REFERRAL_FIELDS = ("referral_code_display", "referral_credited", "referral_counts_display", "referred_by")


class UserAdmin(AccountsUserAdmin):
    """accounts' user page plus the user's code, counter, referrals and referrer."""

    readonly_fields = (*AccountsUserAdmin.readonly_fields, *REFERRAL_FIELDS)
    fieldsets = (*AccountsUserAdmin.fieldsets, ("Referrals", {"fields": REFERRAL_FIELDS}))
    inlines = [*AccountsUserAdmin.inlines, ReferralsMadeInline]

    @staticmethod
    def _referral_code(user: User) -> ReferralCode | None:
        try:
            return user.referral_code
        except ReferralCode.DoesNotExist:
            return None  # created outside the ORM signals: the nightly sync gives it one

    @admin.display(description="referral code")
    def referral_code_display(self, user: User) -> str:
        code = self._referral_code(user)
        return code.code if code is not None else "- (none yet: the nightly sync creates it)"

    @admin.display(description="credited referrals (counter)")
    def referral_credited(self, user: User) -> str:
        code = self._referral_code(user)
        return str(code.credited_count) if code is not None else "-"

    @admin.display(description="referrals made, by status")
    def referral_counts_display(self, user: User) -> str:
        counts = referral_counts(referrer_id=user.pk)
        url = reverse("admin:referrals_referral_changelist") + f"?referrer__id__exact={user.pk}"
        summary = ", ".join(f"{status}: {count}" for status, count in counts.items())
        return format_html('{} (<a href="{}">all of them</a>)', summary, url)

    @admin.display(description="referred by")
    def referred_by(self, user: User) -> str:
        referral = Referral.objects.filter(referred_id=user.pk).select_related("referrer").first()
        if referral is None:
            return "-"
        url = reverse("admin:referrals_referral_change", args=[referral.pk])
        who = referral.referrer.email if referral.referrer is not None else "nobody"
        reason = f", {referral.get_reason_display()}" if referral.reason else ""
        return format_html('{} (<a href="{}">{}{}</a>, code "{}")', who, url, referral.status, reason, referral.code)


admin.site.unregister(User)
admin.site.register(User, UserAdmin)
