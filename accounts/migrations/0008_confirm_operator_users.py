"""Sign-in now refuses an address never confirmed (email_not_confirmed, as GoTrue).

Before, only signups and imports set email_confirmed_at: users made by an
operator (createsuperuser, the Django admin, the shell) and users from before
the GoTrue fields existed have none, and would be locked out. From now on the
field defaults to the creation time (paths that mean "unconfirmed" say None). They are marked
confirmed as of when they joined. Imported users keep what their export said:
Supabase writes `provider` into every user's app_metadata, so those are told
apart by it (an unconfirmed Supabase user stays unconfirmed, as it was there).
"""

import django.utils.timezone
from django.db import migrations, models


def confirm_operator_users(apps, schema_editor):  # noqa: ANN001, ANN201
    User = apps.get_model("accounts", "User")
    unconfirmed = User.objects.filter(email_confirmed_at__isnull=True).only("id", "app_metadata", "date_joined")
    for user in unconfirmed.iterator(chunk_size=1000):
        if not (user.app_metadata or {}).get("provider"):
            User.objects.filter(pk=user.pk, email_confirmed_at__isnull=True).update(email_confirmed_at=user.date_joined)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0007_one_time_tokens")]

    operations = [
        migrations.AlterField(
            model_name="user",
            name="email_confirmed_at",
            field=models.DateTimeField(blank=True, default=django.utils.timezone.now, null=True),
        ),
        migrations.RunPython(confirm_operator_users, migrations.RunPython.noop, elidable=True),
    ]
