from dataclasses import asdict
from typing import Any

from django.core.management.base import BaseCommand

from referrals.services import referrals_reconcile


class Command(BaseCommand):
    help = "Run the nightly referral sync now: pending intents and credits, missing codes, counters."

    def handle(self, *args: Any, **options: Any) -> None:
        report = referrals_reconcile()
        for name, value in asdict(report).items():
            self.stdout.write(f"{name}: {value}")
        self.stdout.write(self.style.SUCCESS("sync_referrals: done"))
