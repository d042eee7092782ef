from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts import mfa, recovery, services
from accounts.admin_forms import AdminLoginForm
from accounts.models import ApiKey, Identity, MfaFactor, Passkey, PublicUser, Session, User

# The admin's sign-in asks users with a second factor for its code (accounts.backends).
admin.site.login_form = AdminLoginForm
admin.site.login_template = "accounts/admin/login.html"

TOTP_PERIOD_SECONDS = 30  # RFC 6238's step, as accounts.totp


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


class ReadOnlyTabularInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # removing a factor is the user's (at aal2) or the "Reset MFA" action's


class MfaFactorInline(ReadOnlyTabularInline):
    """TOTP factors: what they are, never their secret (not a field here)."""

    model = MfaFactor
    verbose_name_plural = "TOTP factors"
    fields = ("friendly_name", "factor_type", "status", "created_at", "last_used")
    readonly_fields = fields
    ordering = ("created_at",)

    @admin.display(description="last used")
    def last_used(self, factor: MfaFactor) -> Any:
        # The last accepted TOTP step is when a code of this factor was last verified.
        if factor.last_step is None:
            return "-"
        return datetime.fromtimestamp(factor.last_step * TOTP_PERIOD_SECONDS, tz=UTC)


class PasskeyInline(ReadOnlyTabularInline):
    """Passkeys: what they are, never their credential or public key (not fields here)."""

    model = Passkey
    verbose_name_plural = "passkeys"
    fields = ("friendly_name", "created_at", "last_used_at", "sign_count", "aaguid", "backed_up")
    readonly_fields = fields
    ordering = ("created_at",)


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    """Other apps extend this page by subclassing it and registering the subclass
    (referrals/admin.py adds the referral fields and the referrals-made inline)."""

    form = UserEditForm
    add_form = UserCreateForm
    ordering = ("-date_joined",)
    list_display = ("email", "username", "display_name", "role", "is_active", "is_staff", "date_joined")
    list_filter = ("profile__role", "is_active", "is_staff", "date_joined")
    search_fields = ("email", "username", "display_name")
    readonly_fields = ("id", "date_joined", "last_login", "deleted_at", "recovery_codes_remaining")
    fieldsets = (
        (None, {"fields": ("id", "email", "username", "display_name", "password")}),
        (
            "Status",
            {
                # banned_until: a ban saved here ends the user's sessions (accounts.signals.user_banned).
                "fields": (
                    "is_active",
                    "banned_until",
                    "deleted_at",
                    "is_staff",
                    "is_superuser",
                    "groups",
                    "user_permissions",
                )
            },
        ),
        ("Dates", {"fields": ("date_joined", "last_login")}),
        # The factors themselves are the inlines below; "Reset MFA" (the list's action) removes them.
        ("Second factors", {"fields": ("recovery_codes_remaining",)}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "username", "password1", "password2")}),)
    inlines = [PublicUserInline, SessionInline, ApiKeyInline, MfaFactorInline, PasskeyInline]
    list_select_related = ("profile",)
    actions = ["reset_mfa"]

    @admin.display(description="recovery codes remaining")
    def recovery_codes_remaining(self, user: User) -> int:
        return recovery.recovery_codes_remaining(user_id=user.pk) if user.pk else 0

    @admin.action(description="Reset MFA: remove factors, passkeys and recovery codes; end every session")
    def reset_mfa(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        actor = f"admin:{request.user.email}"
        for user_id in queryset.values_list("pk", flat=True):
            mfa.user_mfa_reset(user_id=user_id, actor=actor)
        count = queryset.count()
        self.message_user(request, f"Reset the second factors of {count} user(s).", messages.SUCCESS)

    @admin.display(description="role", ordering="profile__role")
    def role(self, user: User) -> str:
        profile = getattr(user, "profile", None)
        return profile.role if profile else "-"

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


class IdentityInline(admin.TabularInline):
    """The provider identities (sign in with a provider): read-only, as providers vouch for them."""

    model = Identity
    extra = 0
    can_delete = False
    fields = ("provider", "provider_id", "email", "created_at", "last_sign_in_at")
    readonly_fields = fields
    ordering = ("created_at",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# Defined after UserAdmin (kept apart from the other inlines): added to its list here.
UserAdmin.inlines = [*UserAdmin.inlines, IdentityInline]
