"""What the platform layer announces, for observers.

velro imports no app, so it cannot count into an app's metrics itself: it sends
these signals, and an app that wants to observe (monitoring, for Prometheus)
connects receivers in its AppConfig.ready(). Sent with the sending class or
function as `sender` (cached receiver lookup: cheap on the request path).
"""

from __future__ import annotations

from django.dispatch import Signal

# SafeCache looked keys up: hits=<int>, misses=<int>.
cache_lookup = Signal(use_caching=True)
# A cache call failed (the breaker tripped): operation=<str>, exc=<Exception>.
cache_error = Signal(use_caching=True)
# A Celery publish failed or was skipped by the open breaker: task=<name>, skipped=<bool>.
enqueue_failed = Signal(use_caching=True)
# Admission control shed a request before its costly work (velro.admission):
# name=<admission, e.g. "password_hash">, reason=<queue_full | queue_timeout |
# client_gone | too_old>. Count it (a counter by name and reason).
admission_shed = Signal(use_caching=True)

# An app asks for a transactional email (the apps do not import the outbox):
# kind=<str>, recipient_id=<user id>, event_key=<str, unique per email>,
# context=<dict>. The outbox (notifications) records it in the sender's
# transaction and sends it after commit, at most once.
email_requested = Signal()
# The outbox renders an email: kind=<str>, context=<dict>. A receiver may
# return a dict that is added to the context: what must not rest in the
# outbox row (a one-time code or link) is derived there, at render time.
email_rendering = Signal()
