from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from accounts import services
from accounts.models import ApiKey, PublicUser, Session, User
from referrals.models import Referral, ReferralCode
from referrals.selectors import referral_counts


class UserCreateForm(AdminUserCreationForm):
    class Meta:
        model = User
        fields = ("email", "username")


class UserEditForm(UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"


class PublicUserInline(admin.StackedInline):
    model = PublicUser
    can_delete = False
    fields = ("role", "email", "username", "display_name", "created_at", "updated_at")
    readonly_fields = ("email", "username", "display_name", "created_at", "updated_at")
    verbose_name_plural = "public user (mirror)"


class SessionInline(admin.TabularInline):
    model = Session
    extra = 0
    can_delete = False
    fields = ("id", "created_at", "expires_at", "revoked_at", "revoked_reason", "ip", "user_agent")
    readonly_fields = fields
    ordering = ("-created_at",)
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    can_delete = False
    fields = ("name", "prefix", "is_primary", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    ordering = ("-created_at",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


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


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    form = UserEditForm
    add_form = UserCreateForm
    ordering = ("-date_joined",)
    list_display = ("email", "username", "display_name", "role", "is_active", "is_staff", "date_joined")
    list_filter = ("profile__role", "is_active", "is_staff", "date_joined")
    search_fields = ("email", "username", "display_name")
    readonly_fields = (
        "id",
        "date_joined",
        "last_login",
        "referral_code_display",
        "referral_credited",
        "referral_counts_display",
        "referred_by",
    )
    fieldsets = (
        (None, {"fields": ("id", "email", "username", "display_name", "password")}),
        ("Status", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("date_joined", "last_login")}),
        (
            "Referrals",
            {"fields": ("referral_code_display", "referral_credited", "referral_counts_display", "referred_by")},
        ),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "username", "password1", "password2")}),)
    inlines = [PublicUserInline, SessionInline, ApiKeyInline, ReferralsMadeInline]
    list_select_related = ("profile",)

    @admin.display(description="role", ordering="profile__role")
    def role(self, user: User) -> str:
        profile = getattr(user, "profile", None)
        return profile.role if profile else "-"

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

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        if change:
            # The mirror inline saves the copy it loaded before the user was
            # saved; re-sync so that copy's email/username/display name (read
            # before this edit) cannot overwrite what users-sync just wrote.
            services.public_user_sync(user=form.instance)

    def get_inlines(self, request: HttpRequest, obj: Any) -> list:
        # The mirror row is created by users-sync on save, not by the add form.
        return self.inlines if obj is not None else []


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "created_at", "expires_at", "revoked_at", "revoked_reason", "ip")
    list_filter = ("revoked_reason", "created_at")
    search_fields = ("user__email", "=id", "ip")
    list_select_related = ("user",)
    ordering = ("-created_at",)
    actions = ["revoke_sessions"]
    readonly_fields = ("id", "user", "created_at", "expires_at", "revoked_at", "revoked_reason", "ip", "user_agent")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Revoke selected sessions (ends their access and refresh tokens)")
    def revoke_sessions(self, request: HttpRequest, queryset: QuerySet[Session]) -> None:
        count = services.session_revoke(session_ids=list(queryset.values_list("pk", flat=True)), reason="admin")
        self.message_user(request, f"Revoked {count} session(s).", messages.SUCCESS)


@admin.register(PublicUser)
class PublicUserAdmin(admin.ModelAdmin):
    list_display = ("email", "username", "display_name", "role", "created_at", "updated_at")
    list_filter = ("role",)
    search_fields = ("email", "username", "display_name")
    readonly_fields = ("user", "email", "username", "display_name", "created_at", "updated_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rows are created by users-sync


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys by their visible prefix; the keyed hash is never shown."""

    list_display = ("prefix", "name", "user", "is_primary", "created_at", "last_used_at", "revoked_at")
    list_filter = ("is_primary", "revoked_at", "created_at")
    search_fields = ("prefix", "name", "user__email")
    list_select_related = ("user",)
    ordering = ("-created_at",)
    fields = ("id", "user", "name", "prefix", "is_primary", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    actions = ["revoke_keys"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are created through the API, where the secret is shown once

    @admin.action(description="Revoke selected API keys")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = services.api_keys_revoke(key_ids=list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)
