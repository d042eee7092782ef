from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "notifications"

    def ready(self) -> None:
        # Registers the send task in every process (the web too): services
        # enqueue it by name (notifications.services.SEND_EMAIL_TASK).
        from notifications import signals, tasks  # noqa: F401  (signals: the email_requested hook)
