"""Reset a user's second factors, for operators without the admin:

    manage.py mfa_reset someone@example.com

Removes their TOTP factors, passkeys and recovery codes and ends every session
(accounts.mfa.user_mfa_reset), audited as mfa_reset with actor cli:<os user>.
Prove who asks out of band first: this is how a lost phone is recovered.
"""

from __future__ import annotations

import getpass

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import mfa
from accounts.models import User


def _os_user() -> str:
    # Who ran it, for the audit trail; a container user without a passwd entry has no name.
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class Command(BaseCommand):
    help = "Remove a user's TOTP factors, passkeys and recovery codes and end every session of the user."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email", help="the user's email address (case-insensitive)")

    def handle(self, *args: object, **options: object) -> None:
        email = str(options["email"]).strip()
        user = User.objects.filter(email__lower=email.lower()).first()  # the indexed lookup
        if user is None:
            raise CommandError(f"no user with the email {email!r}")
        done = mfa.user_mfa_reset(user_id=user.pk, actor=f"cli:{_os_user()}")
        self.stdout.write(
            f"{user.email}: removed {done.factors} TOTP factor(s), {done.passkeys} passkey(s), "
            f"{done.recovery_codes} unused recovery code(s); ended {done.sessions} session(s)"
        )
