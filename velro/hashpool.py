"""Password hashes run on threads of their own, at a lower CPU priority.

An argon2id verify holds a core for ~30 ms and releases the GIL while it
does. Under overload both cores are busy hashing, and every other request
(a shed login's 503, a token-authenticated GET, a health probe) waited its
turn in the kernel's run queue behind the hashes: sheds took hundreds of
milliseconds to say "busy". Here the hash itself runs on a pool thread whose
nice value is HASH_NICE higher (default 5: about a third of a request
thread's CPU weight while both want the CPU), so the kernel runs everything
else first and the hashes take what is left. The handoff to the pool
thread and back costs a quiet login 2-3 ms (README: Overload). The request's
thread waits for the result (admission control, velro.admission, still
bounds how many hashes a process and the machine run).

Raising a thread's own nice value needs no privilege, lowering it back
would: the pool's threads keep it for life and request threads never run at
the lower priority. On Linux each thread has its own nice value
(setpriority on its thread id); where that fails, or with HASH_NICE=0, the
hash runs on the caller's thread as before. The pool is per process and made
again after a fork (gunicorn workers, Celery's prefork children).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from django.conf import settings

logger = logging.getLogger("velro.hashpool")

T = TypeVar("T")

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int, int] | None = None  # (pid, nice, threads) it was made for


def _lower_priority(nice: int) -> None:
    """A pool thread's initializer: its own nice value, `nice` higher."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (OSError, AttributeError) as exc:  # not Linux, or refused: hashes run at the usual priority
        logger.warning("hash threads keep the usual CPU priority: %s", exc)


def _executor() -> ThreadPoolExecutor | None:
    global _pool, _pool_key
    nice = settings.HASH_NICE
    if nice <= 0:
        return None
    key = (os.getpid(), nice, settings.HASH_CONCURRENCY)
    pool = _pool
    if pool is not None and _pool_key == key:
        return pool
    with _lock:
        if _pool is None or _pool_key != key:
            # A pool of a parent process has no threads here; one of other
            # settings is left to finish what it has.
            _pool = ThreadPoolExecutor(
                max_workers=settings.HASH_CONCURRENCY,
                thread_name_prefix="velro-hash",
                initializer=_lower_priority,
                initargs=(nice,),
            )
            _pool_key = key
        return _pool


_inline = threading.local()


@contextmanager
def inline_when(alone: bool) -> Iterator[None]:
    """Within the block, hashes of this thread run on it when `alone` (the
    caller knows no other hash is running on the machine: velro.admission's
    machine slots): with no other hash to make room for, the lower priority
    buys nothing and the handoff costs a quiet login 2-3 ms."""
    previous = getattr(_inline, "on", False)
    _inline.on = alone
    try:
        yield
    finally:
        _inline.on = previous


def hash_run(work: Callable[..., T], *args: object) -> T:
    """`work(*args)` on a hash thread (lower priority); its result or its exception."""
    pool = _executor()
    if pool is None or getattr(_inline, "on", False):
        return work(*args)
    return pool.submit(work, *args).result()
