"""Create (or reset) the benchmark users: `python -m stockpeer.seed PASSWORD EMAIL...`."""

import os
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stockpeer.settings")
django.setup()

from django.contrib.auth.models import User  # noqa: E402


def main(password: str, emails: list[str]) -> None:
    for email in emails:
        user, _ = User.objects.get_or_create(username=email, defaults={"email": email})
        user.set_password(password)
        user.save()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
