"""Sliding-window rate limits in Redis, with a per-process fallback.

A limit of N per W seconds is counted in fixed windows of W seconds, and a
request is weighed against the current window's count plus the previous
window's, scaled by how much of it still lies within the last W seconds (the
sliding-window counter). Plain fixed windows let a client spend the limit at
the end of one window and again at the start of the next: 2N within a
moment. Refused requests count too: a client that ignores Retry-After stays
refused; one that waits as told gets through.

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
        self._counts: dict[str, tuple[int, float]] = {}  # key -> (count, forget at)
        self._lock = threading.Lock()
        self._sweep_at = 0.0

    def incr(self, key: str, amount: int, now: float, keep: float) -> int:
        """Add to a counter kept `keep` seconds from its first count."""
        with self._lock:
            if now >= self._sweep_at:  # forget windows no longer weighed
                self._counts = {k: entry for k, entry in self._counts.items() if entry[1] > now}
                self._sweep_at = now + 60
            count, forget_at = self._counts.get(key, (0, now + keep))
            self._counts[key] = (count + amount, forget_at)
            return count + amount

    def get(self, key: str) -> int:
        with self._lock:
            return self._counts.get(key, (0, 0.0))[0]


@dataclass(frozen=True)
class _Window:
    key: str  # the current window's counter
    previous: str  # the window before it
    keep: int  # seconds the current counter must live: to the end of the next window
    elapsed: float  # seconds into the current window
    rate: Rate


def retry_after(*, previous: int, current: int, elapsed: float, rate: Rate) -> int:
    """Seconds until one more request fits under the sliding count, given the
    counts now (the refused request included)."""
    limit, window = rate.limit, rate.window
    if previous and current + 1 <= limit:
        # Within this window, once enough of the previous one has slid out.
        return max(1, math.ceil(window * (previous - (limit - current - 1)) / previous - elapsed))
    # After this window ends, once enough of it has slid out.
    slide = window * (current - (limit - 1)) / current if current > limit - 1 else 0.0
    return max(1, math.ceil(window - elapsed + slide))


class RateLimiter:
    def __init__(self, cache: SafeCache = safe_cache, clock: Callable[[], float] = time.time) -> None:
        self.cache = cache
        self.clock = clock
        self.local = LocalCounters()

    def _windows(self, limits: Sequence[Limit], now: float) -> list[_Window]:
        windows = []
        for bucket, ident, rate in limits:
            start = math.floor(now / rate.window) * rate.window
            digest = hashlib.sha256(ident.encode()).hexdigest()[:32]
            # Keys name the end of their window (as before the sliding count).
            key = f"rl:{bucket}:{digest}:{start + rate.window}"
            previous = f"rl:{bucket}:{digest}:{start}"
            keep = math.ceil(start + 2 * rate.window - now) + 1
            windows.append(_Window(key, previous, keep, now - start, rate))
        return windows

    def _count(self, windows: list[_Window], amount: int, now: float, *, weigh: bool) -> list[tuple[int, int]]:
        """Add `amount` to each window's counter and (weigh=True) read the
        previous windows, in one cache round trip; (current, previous) each."""
        reads = [window.previous for window in windows] if weigh else []
        counts = self.cache.incr_many([(window.key, amount, window.keep) for window in windows], read=reads)
        if counts is None:
            counts = [self.local.incr(window.key, amount, now, window.keep) for window in windows]
            counts += [self.local.get(key) for key in reads]
        current, previous = counts[: len(windows)], counts[len(windows) :] or [0] * len(windows)
        return list(zip(current, previous, strict=True))

    def hit(self, bucket: str, ident: str, rate: Rate) -> None:
        """Count one request; raise RateLimited (429) once over the limit."""
        (retry,) = self.hit_each([(bucket, ident, rate)])
        if retry is not None:
            raise RateLimited(headers={"Retry-After": str(retry)})

    def hit_each(self, limits: Sequence[Limit]) -> list[int | None]:
        """Count one request against each limit (one round trip); for each, its
        Retry-After in seconds when it is over, else None. The caller decides."""
        if not settings.RATELIMIT_ENABLE:
            return [None] * len(limits)
        now = self.clock()
        windows = self._windows(limits, now)
        answers = []
        for (current, previous), window in zip(self._count(windows, 1, now, weigh=True), windows, strict=True):
            rate = window.rate
            # current + previous x (the share of it still in the last `window` s), times the window
            over = current * rate.window + previous * (rate.window - window.elapsed) > rate.limit * rate.window
            answers.append(
                retry_after(previous=previous, current=current, elapsed=window.elapsed, rate=rate) if over else None
            )
        return answers

    def add(self, bucket: str, ident: str, rate: Rate, amount: int = 1) -> None:
        """Adjust a count without enforcing (-1 hands a reserved slot back)."""
        self.add_many([(bucket, ident, rate)], amount)

    def add_many(self, limits: Sequence[Limit], amount: int = 1) -> None:
        """`add` for several limits, in one round trip."""
        if settings.RATELIMIT_ENABLE and limits:
            now = self.clock()
            self._count(self._windows(limits, now), amount, now, weigh=False)


limiter = RateLimiter()
