from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.hashers import check_password
from django.contrib.auth.models import PermissionsMixin
from django.db import models, transaction
from django.db.models import CharField, EmailField
from django.db.models.functions import Lower
from django.utils import timezone

from accounts.events import password_replaced

# `email__lower=...` compiles to LOWER("email") = %s, which the functional
# unique indexes below serve: one indexed lookup, case-insensitively.
CharField.register_lookup(Lower)
EmailField.register_lookup(Lower)


# Users imported without an address (Supabase anonymous or phone-only users)
# get `<id>@no-email.invalid` to satisfy the required, unique email column:
# .invalid is reserved (RFC 2606) and never deliverable. GoTrue shows them "".
NO_EMAIL_DOMAIN = "no-email.invalid"


def normalize_email(email: str) -> str:
    return BaseUserManager.normalize_email(email.strip())


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra: object) -> User:
        if not email:
            raise ValueError("Users must have an email address")
        user = self.model(email=normalize_email(email), **extra)
        user.set_password(password)  # None -> unusable password
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: object) -> User:
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self.create_user(email, password, **extra)

    def get_by_natural_key(self, email: str) -> User:
        # The admin login form and createsuperuser look users up here:
        # case-insensitive like the API.
        return self.get(email__lower=email.strip().lower())


class User(AbstractBaseUser, PermissionsMixin):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # unique=True satisfies Django's USERNAME_FIELD check; the Lower() constraint
    # below is what makes Alice@X.io and alice@x.io one account.
    email = models.EmailField(max_length=254, unique=True)
    username = models.CharField(max_length=30, null=True, blank=True)
    display_name = models.CharField(max_length=100, blank=True, default="")
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    # Supabase Auth (GoTrue) compatibility: the fields its user object and
    # access tokens carry (accounts/gotrue/), kept by the user import.
    user_metadata = models.JSONField(default=dict, blank=True)
    app_metadata = models.JSONField(default=dict, blank=True)
    phone = models.CharField(max_length=32, null=True, blank=True)
    # Null: an address never confirmed, which cannot sign in with a password
    # (email_not_confirmed). Set to None only by the paths that mean it (a
    # signup in confirmation-required mode, /otp and /invite accounts, the
    # admin API without email_confirm, an unconfirmed Supabase import); a user
    # made any other way (createsuperuser, the Django admin, the shell) is an
    # operator's, confirmed when made.
    email_confirmed_at = models.DateTimeField(null=True, blank=True, default=timezone.now)
    # GoTrue's is_anonymous (`is_anonymous` itself is Django's, always False for a user).
    is_anonymous_user = models.BooleanField(default=False)
    # GoTrue's ban (admin API ban_duration): no sign-in or refresh until then.
    # Unlike is_active=False it ends by itself; the ban ends the sessions at once.
    banned_until = models.DateTimeField(null=True, blank=True)
    # GoTrue's soft delete (admin API should_soft_delete): the row stays
    # (inactive, address freed) for what refers to it.
    deleted_at = models.DateTimeField(null=True, blank=True)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        db_table = "auth_users"
        constraints = [
            models.UniqueConstraint(Lower("email"), name="auth_users_email_ci_unique"),
            models.UniqueConstraint(Lower("username"), name="auth_users_username_ci_unique"),
        ]
        # The admin API's user list: newest first, a page at a time.
        indexes = [models.Index(fields=["-date_joined", "-id"], name="auth_users_joined_desc")]

    def __str__(self) -> str:
        return self.email

    # Set by set_password()/set_unusable_password(), cleared by save(): the
    # next save replaces the password, which ends the user's other sessions
    # (accounts.events.password_replaced) whoever called it.
    _password_replaced = False
    # The session that asked for the change and stays signed in (the API sets it).
    keep_session_id: uuid.UUID | None = None

    def set_password(self, raw_password: str | None) -> None:
        super().set_password(raw_password)
        self._password_replaced = True

    def set_unusable_password(self) -> None:
        super().set_unusable_password()
        self._password_replaced = True

    def is_banned(self, now: datetime | None = None) -> bool:
        return self.banned_until is not None and self.banned_until > (now or timezone.now())

    def check_password(self, raw_password: str) -> bool:
        def upgrade(raw: str) -> None:
            # The same password rehashed with today's parameters: not a
            # change, so the user's sessions stay.
            super(User, self).set_password(raw)
            self._password = None
            self.save(update_fields=["password"])

        return check_password(raw_password, self.password, upgrade)

    def save(self, *args: Any, **kwargs: Any) -> None:
        if getattr(self, "is_cached_snapshot", False):
            # A snapshot from the cache has no password hash: saving it would
            # overwrite the real one. Load the row instead.
            raise RuntimeError("a cached user snapshot is read-only")
        self.email = normalize_email(self.email)
        if self.username == "":
            self.username = None  # blank in the admin means "no username", not a duplicate ""
        self.updated_at = timezone.now()
        if kwargs.get("update_fields") is not None:
            kwargs["update_fields"] = {*kwargs["update_fields"], "updated_at"}
        # post_save (users-sync) runs inside this block, so the mirror row is
        # written in the same transaction by every ORM path: API, admin,
        # createsuperuser, shell. savepoint=False: no extra round trips.
        fields = kwargs.get("update_fields")
        replaced = self._password_replaced and not self._state.adding and (fields is None or "password" in fields)
        with transaction.atomic(using=kwargs.get("using"), savepoint=False):
            super().save(*args, **kwargs)
            if replaced:
                # In the same transaction: the sessions end when the password changes.
                password_replaced.send(sender=User, user=self, keep_session_id=self.keep_session_id)
        self._password_replaced = False
        self.keep_session_id = None


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    EDITOR = "editor", "Editor"
    ADMIN = "admin", "Admin"


class PublicUser(models.Model):
    """The public mirror of an auth user (users-sync).

    email/username/display_name follow the auth user through the post_save
    hook; role is owned here (operators edit it in the admin).
    """

    user = models.OneToOneField(
        User, primary_key=True, db_column="id", on_delete=models.CASCADE, related_name="profile"
    )
    email = models.EmailField(max_length=254)
    username = models.CharField(max_length=30, null=True, blank=True)
    display_name = models.CharField(max_length=100, blank=True, default="")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "users"
        verbose_name = "public user (mirror)"

    def __str__(self) -> str:
        return self.email


class Session(models.Model):
    """One login: the family every rotated refresh token belongs to.

    Access tokens carry this id (`sid`); revoking the row ends the access
    tokens and the refresh tokens of the session at once.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="auth_sessions")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.CharField(max_length=32, blank=True, default="")
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=256, blank=True, default="")
    # Authenticator assurance (accounts.mfa): aal1 after one factor (a password,
    # a code or link), aal2 after a second one (TOTP, a recovery code, a passkey)
    # or a passkey sign-in. Belongs to the session: a refresh keeps it, and the
    # access tokens of the session carry it (`aal`, `amr`).
    aal = models.CharField(max_length=4, default="aal1")
    # How the session was authenticated, oldest first: [{"method", "timestamp"}]
    # (GoTrue's amr claim); `factor_id` is the factor that raised it to aal2.
    amr = models.JSONField(default=list, blank=True)
    factor_id = models.UUIDField(null=True, blank=True)

    class Meta:
        db_table = "auth_sessions"
        indexes = [models.Index(fields=["user", "revoked_at"], name="auth_sess_user_revoked")]

    def __str__(self) -> str:
        return str(self.id)

    def is_active(self, now: object = None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and self.expires_at > now


class RefreshToken(models.Model):
    """An opaque refresh token, stored only as its SHA-256."""

    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="refresh_tokens")
    token_hash = models.CharField(max_length=64, unique=True)
    parent = models.OneToOneField("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="successor")
    created_at = models.DateTimeField(default=timezone.now)
    rotated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "auth_refresh_tokens"

    def __str__(self) -> str:
        return f"refresh token {self.pk} of session {self.session_id}"


class ApiKey(models.Model):
    """A named key for programmatic clients.

    The full key is shown once, at creation. Stored: a visible prefix (to
    recognise it in lists) and a keyed hash (HMAC-SHA256 with a server-side
    key), so a database dump alone cannot be used to check guesses.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=64)
    prefix = models.CharField(max_length=24)
    key_hash = models.CharField(max_length=64, unique=True)
    is_primary = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "auth_api_keys"
        indexes = [models.Index(fields=["user", "revoked_at"], name="auth_apikey_user_revoked")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class RevocationKind(models.TextChoices):
    SESSION = "session"  # subject: the session id (logout, admin revoke, refresh reuse, password change)
    API_KEY = "api_key"  # subject: the key's hash
    USER = "user"  # subject: the user id (deactivated, banned or deleted)


class Revocation(models.Model):
    """The revocation feed: one row per revoked session, key or user.

    Written in the revoking transaction, so it commits exactly when the
    revocation does. Every web process polls it (accounts.revocations) and
    stops trusting cached "active" entries for what it names: a node that
    cannot reach Redis still revokes everywhere, through PostgreSQL.
    """

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(max_length=16, choices=RevocationKind.choices)
    subject = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        db_table = "auth_revocations"

    def __str__(self) -> str:
        return f"{self.kind} {self.subject}"


class OneTimeTokenPurpose(models.TextChoices):
    RECOVERY = "recovery"
    MAGICLINK = "magiclink"  # also the email code sign-in (POST /otp)
    SIGNUP = "signup"  # confirmation of the address given at signup
    INVITE = "invite"
    EMAIL_CHANGE_NEW = "email_change_new"  # sent to the new address
    EMAIL_CHANGE_CURRENT = "email_change_current"  # sent to the current one
    REAUTHENTICATION = "reauthentication"


class OneTimeToken(models.Model):
    """A code and a link sent by email for one purpose, usable once (accounts.onetime).

    Neither secret is stored: `code_hash` is an HMAC of the code under a key
    derived from SECRET_KEY (a plain hash of 10^6 codes falls to an offline
    search), `token_hash` the SHA-256 of the link token (256 bits: a plain
    hash is enough, as for refresh tokens). `used_at` is set by a conditional
    UPDATE: of two concurrent verifies exactly one wins.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="one_time_tokens")
    purpose = models.CharField(max_length=24, choices=OneTimeTokenPurpose.choices)
    sent_to = models.CharField(max_length=254)  # lowercased: the address the email went to
    code_hash = models.CharField(max_length=64)
    token_hash = models.CharField(max_length=64, unique=True)
    redirect_to = models.CharField(max_length=2048, blank=True, default="")
    # PKCE (GoTrue's flow state, kept on the token): the challenge given when
    # the email was asked for, then the auth code GET /verify hands out.
    code_challenge = models.CharField(max_length=128, blank=True, default="")
    code_challenge_method = models.CharField(max_length=8, blank=True, default="")
    auth_code_hash = models.CharField(max_length=64, null=True, blank=True, unique=True)
    auth_code_issued_at = models.DateTimeField(null=True, blank=True)
    auth_code_used_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)  # wrong codes tried
    # The session its verify started: a recovery or email-code session may set
    # a new password without the current one (GoTrue's session.IsRecovery()).
    session_id = models.UUIDField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "auth_one_time_tokens"
        indexes = [
            models.Index(fields=["sent_to", "purpose"], name="auth_ott_sent_to_purpose"),
            models.Index(fields=["user", "purpose"], name="auth_ott_user_purpose"),
        ]

    def __str__(self) -> str:
        return f"{self.purpose} token for {self.sent_to}"


class SigningKeyState(models.TextChoices):
    STANDBY = "standby"  # published in the JWKS, verifies, does not sign yet
    ACTIVE = "active"  # signs every new access token (at most one)
    RETIRED = "retired"  # verifies until its last token has expired, then leaves the JWKS
    REVOKED = "revoked"  # compromised: never verifies again


class SigningAlgorithm(models.TextChoices):
    ES256 = "ES256"
    RS256 = "RS256"


class SigningKey(models.Model):
    """An asymmetric key that signs access tokens of both surfaces (accounts/signing.py).

    The private key is stored encrypted (Fernet, with a key derived from
    SECRET_KEY); the public half is kept as the JWK the JWKS publishes.
    """

    kid = models.CharField(max_length=64, unique=True)
    algorithm = models.CharField(max_length=8, choices=SigningAlgorithm.choices)
    state = models.CharField(max_length=8, choices=SigningKeyState.choices)
    private_key_encrypted = models.TextField()
    public_jwk = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)
    activated_at = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "auth_signing_keys"
        ordering = ["created_at"]
        constraints = [
            # At most one key signs: two processes creating the first key at
            # once, or two promotions racing, cannot both win.
            models.UniqueConstraint(
                fields=["state"], condition=models.Q(state="active"), name="auth_signing_keys_one_active"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kid} {self.algorithm} {self.state}"


# --- second factors (accounts.mfa) ---------------------------------------------------------


class FactorType(models.TextChoices):
    TOTP = "totp"


class FactorStatus(models.TextChoices):
    UNVERIFIED = "unverified"  # enrolled, no code verified yet: not a factor until one is
    VERIFIED = "verified"


class MfaFactor(models.Model):
    """A TOTP second factor (GoTrue's mfa_factors).

    The shared secret is stored encrypted (Fernet, MFA_ENCRYPTION_KEYS);
    `last_step` is the last TOTP time step accepted, advanced by a conditional
    UPDATE, so a code is accepted once (a replay, or a race of two verifies
    with one code, is refused).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="mfa_factors")
    factor_type = models.CharField(max_length=16, choices=FactorType.choices, default=FactorType.TOTP)
    friendly_name = models.CharField(max_length=64, blank=True, default="")
    status = models.CharField(max_length=16, choices=FactorStatus.choices, default=FactorStatus.UNVERIFIED)
    secret_encrypted = models.TextField(blank=True, default="")
    last_step = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    last_challenged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "auth_mfa_factors"
        indexes = [models.Index(fields=["user", "status"], name="auth_mfa_factor_user_status")]
        constraints = [
            # GoTrue refuses two factors of one user with the same friendly name.
            models.UniqueConstraint(
                fields=["user", "friendly_name"],
                condition=~models.Q(friendly_name=""),
                name="auth_mfa_factor_user_name",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.factor_type} factor {self.friendly_name or self.pk} ({self.status})"


class MfaChallenge(models.Model):
    """One challenge of a factor (GoTrue's mfa_challenges): verified once, within its expiry."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    factor = models.ForeignKey(MfaFactor, on_delete=models.CASCADE, related_name="challenges")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    verified_at = models.DateTimeField(null=True, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        db_table = "auth_mfa_challenges"

    def __str__(self) -> str:
        return f"challenge {self.pk} of factor {self.factor_id}"


class RecoveryCode(models.Model):
    """A single-use recovery code (beyond GoTrue): stored only as an HMAC under a
    key derived from SECRET_KEY; `used_at` set by a conditional UPDATE."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="recovery_codes")
    code_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "auth_mfa_recovery_codes"
        constraints = [models.UniqueConstraint(fields=["user", "code_hash"], name="auth_recovery_code_user_hash")]

    def __str__(self) -> str:
        return f"recovery code {self.pk}"


class Passkey(models.Model):
    """A WebAuthn credential (a discoverable passkey) of a user (accounts.passkeys).

    Only the public key is here; `sign_count` is the authenticator's counter,
    which must grow (a regression means a cloned authenticator).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="passkeys")
    credential_id = models.BinaryField(unique=True)
    public_key = models.BinaryField()
    sign_count = models.BigIntegerField(default=0)
    transports = models.JSONField(default=list, blank=True)
    aaguid = models.CharField(max_length=36, blank=True, default="")
    backup_eligible = models.BooleanField(default=False)
    backed_up = models.BooleanField(default=False)
    friendly_name = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "auth_passkeys"
        indexes = [models.Index(fields=["user"], name="auth_passkey_user")]

    def __str__(self) -> str:
        return f"passkey {self.friendly_name or self.pk}"


class WebAuthnChallenge(models.Model):
    """A WebAuthn ceremony's challenge: random, short-lived, used once (conditional UPDATE)."""

    class Kind(models.TextChoices):
        REGISTRATION = "registration"
        AUTHENTICATION = "authentication"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Registration and second-factor use: the user; a sign-in (discoverable credential): none.
    user = models.ForeignKey(User, null=True, blank=True, on_delete=models.CASCADE, related_name="webauthn_challenges")
    session_id = models.UUIDField(null=True, blank=True)  # a second-factor use: the session it raises
    kind = models.CharField(max_length=16, choices=Kind.choices)
    challenge = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "auth_webauthn_challenges"

    def __str__(self) -> str:
        return f"{self.kind} challenge {self.pk}"


# --- Sign in with a provider (accounts.external, accounts.identities) --------------------


class Identity(models.Model):
    """A way to sign in that a provider vouches for: GoTrue's auth.identities row.

    One user, many identities (each provider subject once). The email identity of
    a password user is not stored: the GoTrue user object derives it
    (accounts/gotrue/serializers.py), except for rows imported from Supabase."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="identities")
    provider = models.CharField(max_length=64)
    provider_id = models.CharField(max_length=255)  # the provider's subject (sub, GitHub's numeric id)
    identity_data = models.JSONField(default=dict, blank=True)  # the claims: sub, email, email_verified, name...
    email = models.CharField(max_length=254, blank=True, default="")  # lowercased, as the provider gave it
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    last_sign_in_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "auth_identities"
        constraints = [
            models.UniqueConstraint(fields=["provider", "provider_id"], name="auth_identity_provider_unique")
        ]
        verbose_name_plural = "identities"

    def __str__(self) -> str:
        return f"{self.provider} {self.provider_id}"


class ExternalFlowState(models.Model):
    """One provider round trip (GET /authorize -> provider -> /callback), used once.

    The `state` sent to the provider is random and only its hash is kept; the nonce
    and the PKCE verifier towards the provider live here until the callback claims
    the row. A client PKCE flow (code_challenge) then gets an auth code for
    /token?grant_type=pkce, claimed once too (conditional UPDATEs)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    state_hash = models.CharField(max_length=64, unique=True)
    provider = models.CharField(max_length=64)
    surface = models.CharField(max_length=8, default="gotrue")  # gotrue | native
    nonce = models.CharField(max_length=128, blank=True, default="")
    provider_code_verifier = models.CharField(max_length=128)
    redirect_to = models.CharField(max_length=2048)
    code_challenge = models.CharField(max_length=128, blank=True, default="")
    code_challenge_method = models.CharField(max_length=8, blank=True, default="")
    # linkIdentity: the signed-in user the new identity is for.
    link_user = models.ForeignKey(User, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(User, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    auth_code_hash = models.CharField(max_length=64, null=True, blank=True, unique=True)
    auth_code_issued_at = models.DateTimeField(null=True, blank=True)
    auth_code_used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "auth_flow_states"

    def __str__(self) -> str:
        return f"{self.provider} flow {self.pk}"
