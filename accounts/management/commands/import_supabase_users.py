"""python manage.py import_supabase_users <file>: see accounts/importer.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.importer import ImportReport, NotAnExport, import_supabase_identities, import_supabase_users

BAR_WIDTH = 30


class Command(BaseCommand):
    help = (
        "Import users from a Supabase auth.users export (CSV with header, or JSON lines; .gz accepted). "
        "Keeps ids, passwords (bcrypt, upgraded on first login) and metadata. Idempotent; streams."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--format", choices=["csv", "jsonl"], help="default: by extension, else by content")
        parser.add_argument("--batch-size", type=int, default=1000, help="rows per transaction (default 1000)")
        parser.add_argument(
            "--identities",
            type=Path,
            help="an auth.identities export (CSV or JSON lines) imported after the users: provider sign-ins",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["file"]
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be >= 1")
        self.verbosity = options["verbosity"]
        self.tty = self.stdout.isatty()
        self.bar_shown = False
        try:
            report = import_supabase_users(
                path,
                fmt=options["format"],
                batch_size=options["batch_size"],
                on_notice=self.notice,
                on_progress=self.progress if self.tty else None,
            )
        except NotAnExport as exc:
            raise CommandError(f"{path}: {exc}") from None
        self.clear_bar()
        self.stdout.write(self.style.SUCCESS(f"import_supabase_users: {report.summary()}"))
        if options["identities"] is not None:
            try:
                identities = import_supabase_identities(options["identities"], batch_size=options["batch_size"])
            except (NotAnExport, OSError) as exc:
                raise CommandError(f"{options['identities']}: {exc}") from None
            self.stdout.write(self.style.SUCCESS(f"import_supabase_users: {identities.summary()}"))

    def notice(self, kind: str, message: str) -> None:
        if self.verbosity < (2 if kind == "deleted" else 1):
            return  # deleted rows are expected: counted, listed only with -v 2
        self.clear_bar()
        if kind == "malformed":
            self.stderr.write(f"malformed {message}")
        else:
            self.stdout.write(f"{'skipped' if kind == 'deleted' else kind} {message}")

    def progress(self, report: ImportReport, done: int, total: int) -> None:
        fraction = min(1.0, done / total) if total else 1.0
        filled = int(fraction * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        self.stdout.write(
            f"\r[{bar}] {fraction:4.0%} {report.rows_read:,} rows "
            f"(created {report.created:,}, updated {report.updated:,}, skipped {report.skipped_total:,})",
            ending="",
        )
        self.stdout.flush()
        self.bar_shown = True

    def clear_bar(self) -> None:
        if self.bar_shown:
            self.stdout.write("\r\033[K", ending="")
            self.bar_shown = False
