"""The audit trail of auth events (ASVS 16.3.1)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class AuditEvent(models.Model):
    class Kind(models.TextChoices):
        SIGNUP = "signup"
        LOGIN_SUCCESS = "login_success"
        LOGIN_FAILURE = "login_failure"
        REFRESH = "refresh"
        REFRESH_REUSE = "refresh_reuse_detected"
        LOGOUT = "logout"
        PASSWORD_CHANGE = "password_change"
        API_KEY_CREATED = "api_key_created"
        API_KEY_REVOKED = "api_key_revoked"
        # The GoTrue admin API (service role): detail carries actor=service_role.
        ADMIN_USER_CREATED = "admin_user_created"
        ADMIN_USER_UPDATED = "admin_user_updated"
        ADMIN_USER_BANNED = "admin_user_banned"
        ADMIN_USER_UNBANNED = "admin_user_unbanned"
        ADMIN_USER_DELETED = "admin_user_deleted"
        ADMIN_USER_INVITED = "admin_user_invited"  # /invite
        ADMIN_LINK_GENERATED = "admin_link_generated"  # /admin/generate_link (detail: type)
        # manage.py signing_keys (accounts/signing.py): detail kid, action, from, to.
        SIGNING_KEY_CHANGED = "signing_key_changed"
        # Second factors (accounts.mfa, accounts.totp, accounts.passkeys, accounts.recovery);
        # detail carries factor / passkey ids, never a secret or a code.
        MFA_FACTOR_ENROLLED = "mfa_factor_enrolled"
        MFA_FACTOR_VERIFIED = "mfa_factor_verified"  # detail: first (the factor became verified)
        MFA_FACTOR_UNENROLLED = "mfa_factor_unenrolled"
        MFA_VERIFY_FAILURE = "mfa_verify_failure"  # detail: reason (wrong code, replay, expired)
        RECOVERY_CODE_USED = "recovery_code_used"  # detail: remaining
        RECOVERY_CODES_GENERATED = "recovery_codes_generated"
        PASSKEY_REGISTERED = "passkey_registered"
        PASSKEY_UPDATED = "passkey_updated"
        PASSKEY_DELETED = "passkey_deleted"
        PASSKEY_SIGN_COUNT_REGRESSION = "passkey_sign_count_regression"  # a cloned authenticator?
        MFA_RESET = "mfa_reset"  # an operator removed every factor (detail: actor)
        # Sign in with a provider (accounts.identities): detail identity_id, provider, provider_id.
        IDENTITY_LINKED = "identity_linked"
        IDENTITY_UNLINKED = "identity_unlinked"

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    # No foreign key: the trail outlives deleted users and must never block a delete.
    user_id = models.UUIDField(null=True, blank=True, db_index=True)
    # What a failed login tried (the identifier typed), for investigations.
    identifier = models.CharField(max_length=254, blank=True, default="")
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=256, blank=True, default="")
    request_id = models.CharField(max_length=128, blank=True, default="")
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        db_table = "audit_events"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.kind} {self.user_id or self.identifier} {self.created_at:%Y-%m-%d %H:%M:%S}"
