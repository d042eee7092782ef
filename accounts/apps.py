from django.apps import AppConfig


class AccountsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts"

    def ready(self) -> None:
        from accounts import signals  # noqa: F401  (connects the users-sync hooks)
        from velro import db, openapi  # noqa: F401  (the database system checks; the schema's auth extensions)
