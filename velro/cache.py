"""The cache as the request path sees it: optional, bounded, observable.

Redis makes reads cheap but must never make a request fail or wait. Every
call goes through SafeCache:

- an error (connection refused, socket timeout) opens a breaker: for
  CACHE_BREAKER_COOLDOWN_SECONDS every call skips Redis and behaves as a miss,
  so requests do not each pay a timeout; the outage is logged once, and once
  when it ends;
- when the breaker closes again the cache *generation* is bumped: entries
  written before the outage are ignored from then on, so an invalidation that
  could not reach Redis during the outage (a logout, a revoked key) is never
  answered from a stale entry afterwards;
- hits, misses and errors are counted (`stats`) and announced
  (velro.signals.cache_lookup / cache_error) for the metrics.

The breaker is velro.breaker.Breaker. Time and the backend are injectable so
tests can drive it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from django.conf import settings
from django.core.cache import BaseCache, caches

from velro.breaker import Breaker
from velro.context import phase
from velro.signals import cache_error, cache_lookup

logger = logging.getLogger("velro.cache")

GENERATION_KEY = "gen"


class SafeCache:
    def __init__(
        self,
        backend: BaseCache | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        cooldown: float | None = None,
    ) -> None:
        self._backend = backend
        self._cooldown = cooldown
        self.breaker = Breaker(
            "cache",
            cooldown=lambda: self.cooldown,
            clock=clock,
            logger=logger,
            opened="cache unavailable ({error} during {during}): bypassing it for {cooldown:.1f}s at a time"
            " until it answers again",
        )
        self.stats: Counter[str] = Counter()

    @property
    def backend(self) -> BaseCache:
        return self._backend if self._backend is not None else caches["default"]

    @property
    def cooldown(self) -> float:
        return self._cooldown if self._cooldown is not None else settings.CACHE_BREAKER_COOLDOWN_SECONDS

    @property
    def available(self) -> bool:
        return not self.breaker.open

    def _call(self, operation: str, fn: Callable[[], Any], default: Any) -> Any:
        if self.breaker.open:
            self.stats["bypassed"] += 1
            return default
        try:
            with phase("cache"):
                result = fn()
        except Exception as exc:  # any backend failure degrades to "no cache"
            self._trip(operation, exc)
            return default
        if self.breaker.outage and self._recover():
            # Read again: what the first call returned was read under the
            # old generation, and may be an entry the outage made stale.
            return self._call(operation, fn, default)
        return result

    def _trip(self, operation: str, exc: Exception) -> None:
        self.stats["errors"] += 1
        cache_error.send(SafeCache, operation=operation, exc=exc)
        self.breaker.trip(exc, during=operation)

    def _recover(self) -> bool:
        """End the outage: bump the generation. True when it is over."""
        if not self.breaker.recover():
            return False
        try:
            self._bump_generation()
        except Exception as exc:
            self._trip("generation bump", exc)
            return False
        logger.warning("cache available again: generation bumped, entries from before the outage ignored")
        return True

    def _bump_generation(self) -> None:
        backend = self.backend
        backend.add(GENERATION_KEY, 0, timeout=None)
        backend.incr(GENERATION_KEY)

    # --- the operations the app uses ---------------------------------------------

    def get_many(self, keys: Iterable[str], *, counted: Iterable[str] | None = None) -> dict[str, Any]:
        """`counted`: the keys whose hits and misses the metrics count (default:
        all but the generation); markers read alongside (tombstones) are not."""
        keys = list(keys)
        found = self._call("get_many", lambda: self.backend.get_many(keys), {})
        counted = [key for key in keys if key != GENERATION_KEY] if counted is None else list(counted)
        hits = sum(1 for key in counted if key in found)
        misses = len(counted) - hits
        self.stats["hits"] += hits
        self.stats["misses"] += misses
        cache_lookup.send(SafeCache, hits=hits, misses=misses)
        return found

    def get(self, key: str) -> Any:
        return self.get_many([key]).get(key)

    def set_many(self, data: dict[str, Any], timeout: int | None = None) -> None:
        ttl = settings.CACHE_TTL if timeout is None else timeout
        self._call("set_many", lambda: self.backend.set_many(data, timeout=ttl), None)

    def set(self, key: str, value: Any, timeout: int | None = None) -> None:
        self.set_many({key: value}, timeout)

    def delete_many(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if keys:
            self._call("delete_many", lambda: self.backend.delete_many(keys), None)

    def incr(self, key: str, amount: int, timeout: int) -> int | None:
        """Add to a counter that expires `timeout` seconds after creation;
        None when the cache is unavailable (the caller falls back)."""
        counts = self.incr_many([(key, amount, timeout)])
        return None if counts is None else counts[0]

    def incr_many(self, counters: list[tuple[str, int, int]], *, read: Sequence[str] = ()) -> list[int] | None:
        """Add to several counters, each (key, amount, timeout), and read the
        counters named in `read`, in one round trip on Redis (a pipeline of
        SET NX EX + INCRBY per key, then a GET each): the new values in order,
        then the values read (0 when absent); None when the cache is unavailable."""

        def run() -> list[int]:
            backend = self.backend
            client = getattr(getattr(backend, "client", None), "get_client", None)
            if client is None:  # not django-redis (local memory: no round trips to save)
                counts = [_add_then_incr(backend, key, amount, timeout) for key, amount, timeout in counters]
                return counts + [int(backend.get(key) or 0) for key in read]
            pipe = client(write=True).pipeline(transaction=False)
            for key, amount, timeout in counters:
                raw = backend.make_key(key)
                pipe.set(raw, 0, ex=timeout, nx=True)  # the counter starts its window here
                pipe.incrby(raw, amount)
            for key in read:
                pipe.get(backend.make_key(key))
            replies = pipe.execute()
            written = 2 * len(counters)
            return [int(value) for value in replies[1:written:2]] + [int(value or 0) for value in replies[written:]]

        return self._call("incr", run, None)

    def generation(self, found: dict[str, Any]) -> int:
        """The current generation, read in the same round trip as the entries."""
        value = found.get(GENERATION_KEY)
        return int(value) if value is not None else 0

    def reset(self) -> None:
        """Close the breaker and zero the counters (tests)."""
        self.breaker.reset()
        self.stats.clear()


def _add_then_incr(backend: BaseCache, key: str, amount: int, timeout: int) -> int:
    backend.add(key, 0, timeout=timeout)
    return backend.incr(key, amount)


safe_cache = SafeCache()
