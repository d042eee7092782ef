"""A small per-process cache with a time to live: the L1 in front of Redis.

Platform code with no policy of its own: the caller says how long an entry may
be trusted (`ttl`, read at each `get`, so a settings change applies at once)
and when to drop entries (`pop`, `clear`). Bounded: when full it is emptied
rather than tracking recency, which costs nothing per hit and only a refill
when a process sees more distinct keys than `max_entries` within a TTL.

Dict operations are atomic under the GIL, so request threads share one
instance without a lock; a racing `clear` at worst costs a refill.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any


class LocalCache:
    def __init__(self, *, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[Hashable, tuple[float, Any]] = {}

    def get(self, key: Hashable, ttl: float) -> Any | None:
        found = self._entries.get(key)
        if found is None:
            return None
        stored_at, value = found
        if self.clock() - stored_at >= ttl:
            self._entries.pop(key, None)
            return None
        return value

    def set(self, key: Hashable, value: Any) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (self.clock(), value)

    def pop(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
