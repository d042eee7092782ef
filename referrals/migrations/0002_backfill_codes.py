"""Give users created before the referrals app their referral codes."""

import secrets

from django.db import migrations

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # referrals.codes.ALPHABET, frozen here


def backfill(apps, schema_editor):  # noqa: ANN001, ANN201
    User = apps.get_model("accounts", "User")
    ReferralCode = apps.get_model("referrals", "ReferralCode")
    taken = set(ReferralCode.objects.values_list("code", flat=True))
    for user_id in User.objects.filter(referral_code__isnull=True).values_list("pk", flat=True).iterator():
        code = "".join(secrets.choice(ALPHABET) for _ in range(8))
        while code in taken:
            code = "".join(secrets.choice(ALPHABET) for _ in range(8))
        taken.add(code)
        ReferralCode.objects.create(user_id=user_id, code=code)


class Migration(migrations.Migration):
    dependencies = [("referrals", "0001_initial"), ("accounts", "0002_apikey")]
    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
