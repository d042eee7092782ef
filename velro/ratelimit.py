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
from collections.abc import Callable, Sequence
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


# (bucket, identifier, rate)
Limit = tuple[str, str, Rate]


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

    def _count(self, limits: Sequence[Limit], amount: int) -> list[tuple[int, int]]:
        """Add `amount` to each limit's current window, in one cache round
        trip; return (count, seconds left) for each."""
        now = self.clock()
        windows = []
        for bucket, ident, rate in limits:
            window_end = (math.floor(now / rate.window) + 1) * rate.window
            digest = hashlib.sha256(ident.encode()).hexdigest()[:32]
            windows.append((f"rl:{bucket}:{digest}:{window_end}", rate.window, window_end))
        counts = self.cache.incr_many([(key, amount, window + 1) for key, window, _ in windows])
        if counts is None:
            counts = [self.local.incr(key, amount, now) for key, _, _ in windows]
        return [(count, max(1, math.ceil(end - now))) for count, (_, _, end) in zip(counts, windows, strict=True)]

    def hit(self, bucket: str, ident: str, rate: Rate) -> None:
        """Count one request; raise RateLimited (429) once over the limit."""
        (retry_after,) = self.hit_each([(bucket, ident, rate)])
        if retry_after is not None:
            raise RateLimited(headers={"Retry-After": str(retry_after)})

    def hit_each(self, limits: Sequence[Limit]) -> list[int | None]:
        """Count one request against each limit (one round trip); for each, its
        Retry-After in seconds when it is over, else None. The caller decides."""
        if not settings.RATELIMIT_ENABLE:
            return [None] * len(limits)
        counted = zip(self._count(limits, 1), limits, strict=True)
        return [retry if count > rate.limit else None for (count, retry), (_, _, rate) in counted]

    def add(self, bucket: str, ident: str, rate: Rate, amount: int = 1) -> None:
        """Adjust a count without enforcing (-1 hands a reserved slot back)."""
        self.add_many([(bucket, ident, rate)], amount)

    def add_many(self, limits: Sequence[Limit], amount: int = 1) -> None:
        """`add` for several limits, in one round trip."""
        if settings.RATELIMIT_ENABLE and limits:
            self._count(limits, amount)


limiter = RateLimiter()
