from typing import Any

from django.apps import AppConfig


def _count_cache_lookup(sender: Any, *, hits: int, misses: int, **kwargs: Any) -> None:
    from monitoring.metrics import CACHE

    CACHE.labels("hit").inc(hits)
    CACHE.labels("miss").inc(misses)


def _count_cache_error(sender: Any, **kwargs: Any) -> None:
    from monitoring.metrics import CACHE

    CACHE.labels("error").inc()


def _count_enqueue_failure(sender: Any, **kwargs: Any) -> None:
    from monitoring.metrics import ENQUEUE_FAILURES

    ENQUEUE_FAILURES.inc()


def _count_shed(sender: Any, *, name: str, reason: str, **kwargs: Any) -> None:
    from monitoring.metrics import SHED

    SHED.labels(name, reason).inc()


class MonitoringConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "monitoring"

    def ready(self) -> None:
        # The platform layer (velro) announces what it does; monitoring counts it.
        from velro import signals

        signals.cache_lookup.connect(_count_cache_lookup, dispatch_uid="monitoring.cache_lookup")
        signals.cache_error.connect(_count_cache_error, dispatch_uid="monitoring.cache_error")
        signals.enqueue_failed.connect(_count_enqueue_failure, dispatch_uid="monitoring.enqueue_failed")
        signals.admission_shed.connect(_count_shed, dispatch_uid="monitoring.admission_shed")
