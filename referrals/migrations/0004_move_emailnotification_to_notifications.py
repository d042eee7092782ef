"""The email outbox moved to the notifications app (notifications/migrations/0001_initial.py).

State only: the model leaves referrals' migration state; its table
`email_notifications`, its rows and its index stay exactly where they are and
notifications takes them over. No SQL runs.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("referrals", "0003_email_smtp_started_at")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="EmailNotification")],
            database_operations=[],
        )
    ]
