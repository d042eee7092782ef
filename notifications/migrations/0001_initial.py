"""The email outbox, taken over from referrals (referrals/migrations/0004_...).

The table `email_notifications` was created by referrals 0001 (+ 0003's
smtp_started_at): this migration adds the model to the migration state only
(no SQL on the table: no data moves), after referrals removed it from theirs.
Then the admin's content type follows the model, so operators keep their
permissions on it and the admin log keeps its links.
"""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


def content_type_to_notifications(apps, schema_editor):  # noqa: ANN001, ANN201
    _relabel(apps, old="referrals", new="notifications")


def content_type_to_referrals(apps, schema_editor):  # noqa: ANN001, ANN201
    _relabel(apps, old="notifications", new="referrals")


def _relabel(apps, *, old, new):  # noqa: ANN001, ANN202
    ContentType = apps.get_model("contenttypes", "ContentType")
    if ContentType.objects.filter(app_label=new, model="emailnotification").exists():
        return  # already there (created by a post_migrate): keep it
    ContentType.objects.filter(app_label=old, model="emailnotification").update(app_label=new)


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("referrals", "0004_move_emailnotification_to_notifications"),
        ("contenttypes", "0002_remove_content_type_name"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="EmailNotification",
                    fields=[
                        ("id", models.BigAutoField(primary_key=True, serialize=False)),
                        ("event_key", models.CharField(max_length=100, unique=True)),
                        (
                            "kind",
                            models.CharField(
                                choices=[("welcome", "Welcome"), ("referral_credited", "You referred someone")],
                                max_length=20,
                            ),
                        ),
                        ("context", models.JSONField(blank=True, default=dict)),
                        (
                            "status",
                            models.CharField(
                                choices=[
                                    ("pending", "Pending"),
                                    ("sending", "Sending"),
                                    ("sent", "Sent"),
                                    ("failed", "Failed"),
                                ],
                                default="pending",
                                max_length=10,
                            ),
                        ),
                        ("attempts", models.PositiveIntegerField(default=0)),
                        ("last_error", models.CharField(blank=True, default="", max_length=300)),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("claimed_at", models.DateTimeField(blank=True, null=True)),
                        ("smtp_started_at", models.DateTimeField(blank=True, null=True)),
                        ("sent_at", models.DateTimeField(blank=True, null=True)),
                        (
                            "recipient",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="emails",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "db_table": "email_notifications",
                        "indexes": [
                            models.Index(
                                condition=models.Q(("status", "pending")), fields=["created_at"], name="email_pending"
                            )
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_type_to_notifications, content_type_to_referrals),
    ]
