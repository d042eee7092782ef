"""Revocation that is final: at once where the cache is reachable, within 1 s on every node.

Two mechanisms, each closing a gap the other leaves:

- **Tombstones in the cache.** A revocation writes `revoked:<kind>:<subject>`
  (before and after its commit). Token and key checks read the tombstone in
  the same round trip as the cached entry, and a tombstone makes a cached
  *positive* entry worthless: the check goes to PostgreSQL. A reader that
  raced the revocation (read the row before the commit, wrote "active" after
  the delete) cannot resurrect the session: the tombstone outlives its entry.
  Negative entries (revoked, inactive) are always safe to trust.

- **The revocation feed in PostgreSQL.** The revoking transaction also writes
  a `Revocation` row. Every web process polls the table every
  REVOCATION_FEED_INTERVAL_SECONDS (0.5 s) in a background thread, remembers
  what it saw for as long as a cache entry can live, and writes the tombstones
  itself. So a node that cannot reach Redis revokes through PostgreSQL, and a
  node whose cache still holds "active" stops trusting it within one interval.
  When a process has not polled successfully for REVOCATION_FEED_MAX_LAG_SECONDS
  (1 s), it trusts no cached positive entry at all: the bound holds even when
  its poller is stuck.

- **A cache of this process's own** (the embedded default's local-memory
  cache: no Redis) holds no tombstone written by another worker. Each
  revocation also bumps the machine's L1 epoch (a shared-memory word every
  worker reads, `l1_epoch()`), and while the epoch differs from what it was
  when this process last polled, no cached positive entry is trusted and the
  poller is woken to read the feed now: another worker's logout is final
  here at once, not after up to an interval.

Polling (not LISTEN/NOTIFY) because it works through a transaction-pooling
PgBouncer, costs one indexed query per process per interval, and needs no
connection held open.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from django.core.signals import setting_changed
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import Revocation, RevocationKind
from velro.cache import safe_cache
from velro.localcache import SharedEpoch

logger = logging.getLogger("velro.revocations")

# A revocation row whose id was handed out but not yet visible (its
# transaction still open) is waited for this long, then taken as rolled back.
# Longer than any auth transaction may stay open (idle-in-transaction timeout).
GAP_PATIENCE_SECONDS = 30.0


def tombstone_key(kind: str, subject: str) -> str:
    return f"revoked:{kind}:{subject}"


def tombstones_write(kind: str, subjects: Iterable[str]) -> None:
    """Best effort (the feed repeats it from every node that can reach the cache)."""
    keys = {tombstone_key(kind, subject): 1 for subject in subjects}
    if keys:
        # Outlives every entry written before it (entries live CACHE_TTL).
        safe_cache.set_many(keys, timeout=settings.CACHE_TTL + 60)


_epoch: SharedEpoch | None = None


_local_cache: bool | None = None


def _cache_is_local() -> bool:
    """Is the cache this process's own (local memory), so no other worker's
    tombstone reaches it? Asked on every token check: worked out once per CACHES."""
    global _local_cache
    if _local_cache is None:
        _local_cache = isinstance(caches["default"], LocMemCache)
    return _local_cache


def _on_setting_changed(*, setting: str, **kwargs: object) -> None:
    global _local_cache
    if setting == "CACHES":
        _local_cache = None


setting_changed.connect(_on_setting_changed, dispatch_uid="accounts.revocations.caches")


def l1_epoch() -> SharedEpoch:
    """The machine's L1 epoch (AUTH_L1_EPOCH_PATH): bumped by any process that
    revokes or changes a user, so every process's L1 drops at once."""
    global _epoch
    if _epoch is None or _epoch.path != settings.AUTH_L1_EPOCH_PATH:
        _epoch = SharedEpoch(settings.AUTH_L1_EPOCH_PATH)
    return _epoch


def l1_epoch_bump() -> None:
    """Now, and again after the caller's transaction commits (a process that
    refilled its L1 from the uncommitted past in between drops it again)."""
    l1_epoch().bump()
    if connection.in_atomic_block:
        transaction.on_commit(lambda: l1_epoch().bump())


def revocation_record(*, kind: RevocationKind, subjects: Iterable[str]) -> None:
    """Record a revocation in the caller's transaction; tombstone it now and after commit."""
    subjects = [str(subject) for subject in subjects]
    if not subjects:
        return
    now = timezone.now()
    Revocation.objects.bulk_create([Revocation(kind=kind, subject=subject, created_at=now) for subject in subjects])
    # This process stops trusting its cached copies (its L1 included) at once;
    # a rollback only costs it cache hits on these subjects for a while.
    feed.note(kind, subjects)
    l1_epoch_bump()
    tombstones_write(kind, subjects)
    if connection.in_atomic_block:
        transaction.on_commit(lambda: tombstones_write(kind, subjects))


def revocations_prune(*, older_than: timedelta = timedelta(days=1)) -> int:
    """Delete feed rows no process needs any more (beat, hourly)."""
    deleted, _ = Revocation.objects.filter(created_at__lt=timezone.now() - older_than).delete()
    return deleted


class RevocationFeed:
    """This process's view of the feed: what was revoked recently, and how fresh that view is."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._revoked: dict[tuple[str, str], float] = {}  # (kind, subject) -> forget after
        self._low: int | None = None  # every id <= low has been seen (or given up on)
        self._seen: set[int] = set()  # ids > low already seen
        self._gaps: dict[int, float] = {}  # id missing below a seen one -> first noticed
        self._polled_at = float("-inf")
        self._epoch_at_poll: bytes | None = None  # the machine's L1 epoch when the last poll began
        self._sweep_at = 0.0
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._wake = threading.Event()

    # --- what the request path asks ----------------------------------------------

    @property
    def enabled(self) -> bool:
        return settings.REVOCATION_FEED_INTERVAL_SECONDS > 0

    def trusts_cached(self, *subjects: tuple[str, str]) -> bool:
        """May a cached positive entry about these (kind, subject)s be used?"""
        if not self.enabled:
            return True
        self.ensure_started()
        with self._lock:
            if self._clock() - self._polled_at > settings.REVOCATION_FEED_MAX_LAG_SECONDS:
                return False  # our view may be older than the bound: ask PostgreSQL
            if any(subject in self._revoked for subject in subjects):
                return False
            epoch_at_poll = self._epoch_at_poll
        if _cache_is_local() and l1_epoch().value() != epoch_at_poll:
            # A worker of this machine revoked (or changed a user) since our
            # last poll, and our cache cannot hold its tombstone: ask
            # PostgreSQL, and poll now rather than at the next interval.
            self._wake.set()
            return False
        return True

    def note(self, kind: str, subjects: Iterable[str]) -> None:
        """A revocation made by this process: distrust its subjects now, not at the next poll."""
        forget_after = self._clock() + settings.CACHE_TTL + 60
        with self._lock:
            for subject in subjects:
                self._revoked[(str(kind), str(subject))] = forget_after

    # --- polling ---------------------------------------------------------------------

    def poll(self) -> int:
        """Read new feed rows; return how many were new. Raises on database errors."""
        started = self._clock()
        epoch = l1_epoch().value()  # before the read: a bump during it is caught next time
        if self._low is None:
            self._low = self._initial_low()
        rows = list(
            Revocation.objects.filter(id__gt=self._low).order_by("id").values_list("id", "kind", "subject")[:10000]
        )
        fresh = [(kind, subject) for row_id, kind, subject in rows if row_id not in self._seen]
        forget_after = started + settings.CACHE_TTL + 60
        with self._lock:
            for key in fresh:
                self._revoked[key] = forget_after
            self._advance([row_id for row_id, _, _ in rows], started)
            self._expire(started)
            self._polled_at = started
            self._epoch_at_poll = epoch
        for kind in {kind for kind, _ in fresh}:
            tombstones_write(kind, [subject for k, subject in fresh if k == kind])
        return len(fresh)

    def _initial_low(self) -> int:
        # Everything a live cache entry could predate, plus clock-skew room.
        cutoff = timezone.now() - timedelta(seconds=settings.CACHE_TTL + 120)
        older = Revocation.objects.filter(created_at__lt=cutoff).order_by("-id").values_list("id", flat=True).first()
        return older or 0

    def _advance(self, ids: list[int], now: float) -> None:
        """Move the low-water mark over contiguous seen ids; wait for gaps a while."""
        self._seen.update(ids)
        top = max(self._seen, default=self._low)
        for missing in range(self._low + 1, top):
            if missing not in self._seen:
                self._gaps.setdefault(missing, now)
        while True:
            following = self._low + 1
            if following in self._seen:
                self._seen.discard(following)
            elif following in self._gaps and now - self._gaps[following] > GAP_PATIENCE_SECONDS:
                pass  # its transaction rolled back (or never ends): stop waiting
            else:
                break
            self._gaps.pop(following, None)
            self._low = following

    def _expire(self, now: float) -> None:
        if now >= self._sweep_at:  # at most every 10 s: a dict comprehension over what we hold
            self._revoked = {key: until for key, until in self._revoked.items() if until > now}
            self._sweep_at = now + 10

    def _run(self, stop: threading.Event, wake: threading.Event) -> None:
        # This thread's own events: after a reset() a new poller gets new ones.
        interval = settings.REVOCATION_FEED_INTERVAL_SECONDS
        failing = False
        while True:  # the first poll at once: until then no cached entry is trusted
            try:
                self.poll()
                if failing:
                    logger.warning("revocation feed: polling again")
                failing = False
            except Exception as exc:  # the database is down: the lag check covers us
                if not failing:
                    logger.warning("revocation feed: poll failed (%s): cached tokens not trusted", type(exc).__name__)
                failing = True
            finally:
                connection.close()  # this thread's connection goes back to the pool
            wake.wait(interval)  # the interval, or sooner when trusts_cached wakes us
            wake.clear()
            if stop.is_set():
                return

    def ensure_started(self) -> None:
        """One poller thread per process (started again in a forked child)."""
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stop = threading.Event()
            self._wake = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop, self._wake), name="revocation-feed", daemon=True
            )
            self._thread.start()

    def reset(self, clock: Callable[[], float] | None = None) -> None:
        """Forget everything and stop polling (tests)."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            self._clock = clock or self._clock
            self._revoked.clear()
            self._low = None
            self._seen.clear()
            self._gaps.clear()
            self._polled_at = float("-inf")
            self._epoch_at_poll = None
            self._thread = None


feed = RevocationFeed()
