from django.apps import AppConfig


def _argon2_warm_up() -> None:
    """The dummy argon2id hash the unknown-user login verifies against (also loads argon2)."""
    from accounts.services import password_verify_dummy

    password_verify_dummy(password="warm-up")


class AccountsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts"

    def ready(self) -> None:
        from accounts import signals  # noqa: F401  (connects the users-sync hooks)
        from accounts.gotrue import errors as gotrue_errors
        from velro import db, openapi, warmup  # noqa: F401  (the database system checks; the schema's auth extensions)

        warmup.register("argon2", _argon2_warm_up)
        gotrue_errors.register()  # client mistakes under /auth/v1/ answered in GoTrue's shape
