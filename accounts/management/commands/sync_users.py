from typing import Any

from django.core.management.base import BaseCommand

from accounts.services import public_users_repair


class Command(BaseCommand):
    help = "Backfill and repair the public users mirror from the auth users. Idempotent."

    def handle(self, *args: Any, **options: Any) -> None:
        report = public_users_repair()
        for user_id in report.created:
            self.stdout.write(f"created mirror row {user_id}")
        for user_id in report.updated:
            self.stdout.write(f"updated mirror row {user_id}")
        self.stdout.write(
            self.style.SUCCESS(
                f"sync_users: created={len(report.created)} updated={len(report.updated)} unchanged={report.unchanged}"
            )
        )
