"""Per-process caching: a small cache with a time to live (the L1 in front of
Redis), and a machine-wide epoch that tells every process when to drop it.

Platform code with no policy of its own: the caller says how long an entry may
be trusted (`ttl`, read at each `get`, so a settings change applies at once)
and when to drop entries (`pop`, `clear`). Bounded: when full it is emptied
rather than tracking recency, which costs nothing per hit and only a refill
when a process sees more distinct keys than `max_entries` within a TTL.

Dict operations are atomic under the GIL, so request threads share one
instance without a lock; a racing `clear` at worst costs a refill.
"""

from __future__ import annotations

import mmap
import os
import threading
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


class SharedEpoch:
    """A value every process of this machine sees change when any of them says so.

    One 8-byte file in shared memory (tmpfs), mapped by each process. `bump()`
    writes a fresh random value; `changed()` tells a reader whether the value
    differs from the one it saw last (and remembers the new one). Random rather
    than a counter, so two processes bumping at once cannot write the same
    value a reader already saw. When the file cannot be used, `changed()` is
    always True: callers then trust nothing they cached locally.
    """

    SIZE = 8

    def __init__(self, path: str) -> None:
        self.path = path
        self._map: mmap.mmap | None = None
        self._pid = 0  # the process that mapped (or failed to map) the file
        self._seen = threading.local()

    def _mapped(self) -> mmap.mmap | None:
        if self._pid == os.getpid():
            return self._map  # None: it failed in this process, not tried again on every read
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                if os.fstat(fd).st_size < self.SIZE:
                    os.ftruncate(fd, self.SIZE)
                self._map = mmap.mmap(fd, self.SIZE)
            finally:
                os.close(fd)
        except OSError:
            self._map = None
        self._pid = os.getpid()
        return self._map

    def bump(self) -> None:
        mapped = self._mapped()
        if mapped is not None:
            mapped[: self.SIZE] = os.urandom(self.SIZE)

    def value(self) -> bytes | None:
        """The current value (None when the file cannot be used), for a reader
        that keeps what it saw itself rather than per thread."""
        mapped = self._mapped()
        return None if mapped is None else mapped[: self.SIZE]

    def changed(self) -> bool:
        mapped = self._mapped()
        if mapped is None:
            return True
        value = mapped[: self.SIZE]
        if getattr(self._seen, "value", None) == value:
            return False
        self._seen.value = value
        return True
