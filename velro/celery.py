"""The Celery app `velro`: `celery -A velro worker`, `celery -A velro beat`."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "velro.settings")

app = Celery("velro")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
