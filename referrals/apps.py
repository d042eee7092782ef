from django.apps import AppConfig


class ReferralsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "referrals"

    def ready(self) -> None:
        from accounts.selectors import user_field_register
        from referrals import selectors, signals  # noqa: F401  (connects the hooks on accounts' events)

        # The user body's (and cached snapshot's) "referral_code", read with the
        # user in the same query (select_related), never by a query of its own.
        user_field_register(name="referral_code", read=selectors.user_referral_code, related="referral_code")
