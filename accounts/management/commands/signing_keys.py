"""Rotate the asymmetric signing keys (accounts/signing.py; README "Signing keys and JWKS").

    manage.py signing_keys list
    manage.py signing_keys add [--algorithm ES256|RS256]   a standby key (published, not signing)
    manage.py signing_keys promote KID                     standby -> active; the active one -> retired
    manage.py signing_keys retire KID                      a standby key -> retired
    manage.py signing_keys revoke KID                      any -> revoked (compromised: stops verifying)

One line per result; a refused transition exits non-zero with a message.
Every change is audited (audit_events, kind signing_key_changed).
"""

from __future__ import annotations

import getpass
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import signing
from accounts.models import SigningKey, SigningKeyState


def _line(key: SigningKey) -> str:
    parts = [key.kid, key.algorithm, key.state, f"created={key.created_at:%Y-%m-%dT%H:%M:%SZ}"]
    for label, value in (("activated", key.activated_at), ("retired", key.retired_at), ("revoked", key.revoked_at)):
        if value is not None:
            parts.append(f"{label}={value:%Y-%m-%dT%H:%M:%SZ}")
    return " ".join(parts)


def _os_user() -> str:
    # Who ran it, for the audit trail; a container user without a passwd entry has no name.
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class Command(BaseCommand):
    help = "List, add, promote, retire or revoke the keys that sign access tokens (both surfaces)."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        actions.add_parser("list", help="every key, oldest first")
        add = actions.add_parser("add", help="a new standby key (published in the JWKS, not signing yet)")
        add.add_argument("--algorithm", choices=signing.ALGORITHMS, default=None)
        for name, text in (
            ("promote", "standby -> active (the active key is retired)"),
            ("retire", "a standby key -> retired"),
            ("revoke", "any key -> revoked: its tokens stop verifying everywhere"),
        ):
            actions.add_parser(name, help=text).add_argument("kid")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        actor = f"manage.py signing_keys ({_os_user()})"
        try:
            if action == "list":
                keys = signing.signing_keys_list()
                for key in keys:
                    self.stdout.write(_line(key))
                if not keys:
                    self.stdout.write("no signing keys yet (one is created at the first signing)")
            elif action == "add":
                key = signing.signing_key_add(algorithm=options["algorithm"], actor=actor)
                self.stdout.write(
                    self.style.SUCCESS(
                        f"added {key.kid} {key.algorithm} standby: published in the JWKS; promote it once "
                        f"consumers' JWKS caches have refreshed"
                    )
                )
            elif action == "promote":
                key = signing.signing_key_promote(kid=options["kid"], actor=actor)
                self.stdout.write(self.style.SUCCESS(f"promoted {key.kid}: active, signing every new token"))
            elif action == "retire":
                key = signing.signing_key_retire(kid=options["kid"], actor=actor)
                self.stdout.write(self.style.SUCCESS(f"retired {key.kid}"))
            elif action == "revoke":
                key, previous = signing.signing_key_revoke(kid=options["kid"], actor=actor)
                note = ""
                if previous == SigningKeyState.ACTIVE:
                    note = "; no active key now: promote a standby one (else one is created at the next signing)"
                self.stdout.write(
                    self.style.SUCCESS(f"revoked {key.kid} (was {previous}): its tokens no longer verify{note}")
                )
        except signing.SigningKeyError as exc:
            raise CommandError(str(exc)) from None
