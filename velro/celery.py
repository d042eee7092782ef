"""The Celery app `velro`: `celery -A velro worker`, `celery -A velro beat`."""

import os

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "velro.settings")

app = Celery("velro")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect
def _warm_up(**kwargs: object) -> None:
    from velro.warmup import warm_up

    warm_up()
