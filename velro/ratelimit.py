"""Fixed-window rate limits in Redis, with a per-process fallback.

Counters live in the shared cache so every web worker sees the same count.
When the cache is unavailable (breaker open, Redis down) the limits do not
vanish: each process keeps its own counters for the same windows, so the
effective limit becomes at most `limit x processes` until Redis is back.
The identifiers (IPs, e-mail addresses) are hashed before they become keys.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from velro.cache import SafeCache, safe_cache
from velro.errors import RateLimited

logger = logging.getLogger("velro.ratelimit")


@dataclass(frozen=True)
class Rate:
    limit: int
    window: int  # seconds

    @classmethod
    def setting(cls, name: str) -> Rate:
        """A (count, seconds) pair parsed strictly by the settings module."""
        limit, window = getattr(settings, name)
        return cls(limit, window)


class LocalCounters:
    """The per-process fallback: the same windows, counted in memory."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._sweep_at = 0.0

    def incr(self, key: str, amount: int, now: float) -> int:
        with self._lock:
            if now >= self._sweep_at:  # drop windows that have ended
                self._counts = {k: v for k, v in self._counts.items() if float(k.rsplit(":", 1)[1]) > now}
                self._sweep_at = now + 60
            self._counts[key] = self._counts.get(key, 0) + amount
            return self._counts[key]


class RateLimiter:
    def __init__(self, cache: SafeCache = safe_cache, clock: Callable[[], float] = time.time) -> None:
        self.cache = cache
        self.clock = clock
        self.local = LocalCounters()

    def _count(self, bucket: str, ident: str, rate: Rate, amount: int) -> tuple[int, int]:
        """Add `amount` to the current window; return (count, seconds left)."""
        now = self.clock()
        window_end = (math.floor(now / rate.window) + 1) * rate.window
        digest = hashlib.sha256(ident.encode()).hexdigest()[:32]
        key = f"rl:{bucket}:{digest}:{window_end}"
        count = self.cache.incr(key, amount, timeout=rate.window + 1)
        if count is None:
            count = self.local.incr(key, amount, now)
        return count, max(1, math.ceil(window_end - now))

    def hit(self, bucket: str, ident: str, rate: Rate) -> None:
        """Count one request; raise RateLimited (429) once over the limit."""
        if not settings.RATELIMIT_ENABLE:
            return
        count, retry_after = self._count(bucket, ident, rate, 1)
        if count > rate.limit:
            raise RateLimited(headers={"Retry-After": str(retry_after)})

    def add(self, bucket: str, ident: str, rate: Rate, amount: int = 1) -> None:
        """Adjust a count without enforcing (-1 hands a reserved slot back)."""
        if settings.RATELIMIT_ENABLE:
            self._count(bucket, ident, rate, amount)


limiter = RateLimiter()
