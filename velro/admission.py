"""Admission control: bound the CPU-bound work in flight, never queue unboundedly.

A password hash (argon2id, ~35 ms of one core) is the one piece of request work
that more threads cannot speed up: with WEB_CONCURRENCY workers x
GUNICORN_THREADS threads all hashing at once, more than about one hash per core
only queues, and under overload the queue (gunicorn's, then the CPU's) grows
until clients give up, after which their logins still ran and made sessions
for nobody. So:

- `Admission` bounds the work in flight in this process (`limit` slots), lets
  at most `queue_max` callers wait for a slot, each for at most `timeout`
  seconds (FIFO, handed off on release: a newcomer never overtakes a waiter),
  and sheds everything else at once with `velro.errors.Overloaded` (503
  `overloaded` + Retry-After). Every shed is counted (`shed_counts`), logged
  at most once a second per reason at WARNING (with the count since) and
  announced (`velro.signals.admission_shed`, for metrics).
- `request_check` sheds a request whose client has gone (its socket is closed
  or reset: `client_gone`) or that has waited longer than its budget
  (`request_age`: under gunicorn, measured from when its last byte reached
  the kernel, so the time it spent in the accept backlog and in gunicorn's
  thread-pool queue counts, which the app cannot see otherwise; behind a
  trusted proxy, also from its X-Request-Start).
- `password_hashing(request)` is the two together for password hashing, sized
  by the HASH_* settings; the accounts layer wraps every hash and verify in it.

Platform code: velro imports no app.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

from velro import context
from velro.errors import Overloaded
from velro.hashpool import inline_when
from velro.signals import admission_shed

logger = logging.getLogger("velro.admission")

Clock = Callable[[], float]
Wait = Callable[[threading.Condition, float], Any]

# Why a request was shed (the `reason` of Overloaded, the signal and the counters).
QUEUE_FULL = "queue_full"  # every slot busy and no room to wait (or waiting disabled)
QUEUE_TIMEOUT = "queue_timeout"  # waited `timeout` for a slot without getting one
CLIENT_GONE = "client_gone"  # the client closed or reset its connection
TOO_OLD = "too_old"  # the request waited longer than its budget before the work
REASONS = (QUEUE_FULL, QUEUE_TIMEOUT, CLIENT_GONE, TOO_OLD)
SHED_LOG_INTERVAL = 1.0  # seconds: at most one log line per reason per interval (with the count)


def _condition_wait(condition: threading.Condition, seconds: float) -> None:
    condition.wait(seconds)


class _Ticket:
    """A waiter's place in the queue; `granted` is set by the releasing thread."""

    __slots__ = ("granted",)

    def __init__(self) -> None:
        self.granted = False


class Admission:
    """At most `limit` holders of a slot at once; at most `queue_max` waiters,
    each waiting at most `timeout` seconds; everyone else is shed at once.

    `clock` (monotonic seconds) and `wait(condition, seconds)` are injectable,
    so tests drive the bounded wait without sleeping.
    """

    def __init__(
        self,
        name: str,
        *,
        limit: int,
        queue_max: int,
        timeout: float,
        clock: Clock = time.monotonic,
        wait: Wait = _condition_wait,
    ) -> None:
        if limit < 1:
            raise ValueError("an Admission needs at least one slot")
        self.name = name
        self.limit = limit
        self.queue_max = max(0, queue_max)
        self.timeout = max(0.0, timeout)
        self._clock = clock
        self._wait = wait
        self._condition = threading.Condition()  # an RLock: release() may run under it
        self._queue: deque[_Ticket] = deque()
        self._in_flight = 0
        self.granted = 0
        self.shed_counts: dict[str, int] = dict.fromkeys(REASONS, 0)
        self._unlogged: dict[str, int] = {}  # per reason: shed since its last log line
        self._logged_at: dict[str, float] = {}

    def __repr__(self) -> str:
        return (
            f"<Admission {self.name} in_flight={self.in_flight}/{self.limit}"
            f" waiting={self.waiting}/{self.queue_max} timeout={self.timeout}s>"
        )

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def shed_total(self) -> int:
        return sum(self.shed_counts.values())

    @contextmanager
    def slot(self, timeout: float | None = None) -> Iterator[None]:
        """Hold a slot for the block (released on any exit, exceptions too);
        raises Overloaded when none can be had within `timeout` (default: the
        instance's)."""
        self.acquire(self.timeout if timeout is None else timeout)
        try:
            yield
        finally:
            self.release()

    def acquire(self, timeout: float) -> None:
        with self._condition:
            if self._in_flight < self.limit and not self._queue:
                self._in_flight += 1
                self.granted += 1
                return
            if timeout <= 0 or len(self._queue) >= self.queue_max:
                reason = QUEUE_FULL
            else:
                reason = self._wait_in_queue(timeout)
                if reason is None:
                    return
        raise self.shed(reason)

    def _wait_in_queue(self, timeout: float) -> str | None:
        """Wait (lock held) for a slot handed over by release(); None once granted."""
        ticket = _Ticket()
        self._queue.append(ticket)
        deadline = self._clock() + timeout
        try:
            while not ticket.granted:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    self._queue.remove(ticket)
                    return QUEUE_TIMEOUT
                self._wait(self._condition, remaining)
        except BaseException:
            # Interrupted while waiting: leave the queue, or give back the
            # slot handed over in the meantime.
            if ticket.granted:
                self.release()
            else:
                self._queue.remove(ticket)
            raise
        self.granted += 1
        return None

    def release(self) -> None:
        with self._condition:
            if self._queue:
                # Hand the slot over: in_flight stays, the first waiter owns it.
                self._queue.popleft().granted = True
                self._condition.notify_all()
                return
            if self._in_flight <= 0:
                raise RuntimeError(f"{self.name}: release() without a slot held")
            self._in_flight -= 1

    def shed(self, reason: str) -> Overloaded:
        """Count, log and announce a shed request; returns the error to raise.

        Logged at most once per SHED_LOG_INTERVAL seconds per reason, with how
        many were shed since the last line: under overload a line per shed
        (and Django's own ERROR line per 503, which this request's record now
        tells the request middleware to skip) cost a shed more CPU than the
        rest of its answer, CPU the served logins needed. Every shed is
        counted and announced (metrics) all the same."""
        now = self._clock()
        with self._condition:
            self.shed_counts[reason] = self.shed_counts.get(reason, 0) + 1
            self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
            due = now - self._logged_at.get(reason, float("-inf")) >= SHED_LOG_INTERVAL
            if due:
                count, self._unlogged[reason], self._logged_at[reason] = self._unlogged[reason], 0, now
        if due:
            logger.warning(
                "admission %s: shed (%s): %d since the last line",
                self.name,
                reason,
                count,
                extra={"reason": reason, "shed": count},
            )
        record = context.current()
        if record is not None:
            record.shed = True
        admission_shed.send(sender=Admission, name=self.name, reason=reason)
        return Overloaded(reason=reason)


# --- across the processes of the machine -----------------------------------------------------


class MachineSlots:
    """At most `count` holders at once among every process of this machine
    (container) that uses `directory`: one advisory lock (flock) per slot file.

    gunicorn runs several worker processes, and connections stay with the
    worker that accepted them, so a per-process bound alone either lets every
    worker hash at once (5 memory-hard argon2id hashes thrashing 2 cores'
    caches) or, set to one per worker, sheds in a busy worker while another
    sits idle. The machine's cores are the real bound. The kernel drops a
    process's locks when it dies, so a worker killed mid-hash leaks no slot.
    A waiter polls, every `poll` seconds at first and backing off, until its deadline. A freed slot
    is mostly taken at once by a waiter of the process that freed it (its own
    queue wakes it, no poll), so a waiter in another process could lose every
    round until its deadline and be shed at modest load. So a waiter that has
    waited `starve_after` seconds says so (a shared lock on the `waiting`
    file, which the kernel also drops if its process dies) and then polls at
    the base interval, and everyone else (newcomers and shorter waiters)
    leaves free slots to such waiters: a turn comes within about one hash.
    If the slot files cannot be used (permissions, no such file system), the
    bound is skipped with one warning: hashing never fails because of it.
    """

    def __init__(
        self,
        directory: str,
        count: int,
        *,
        poll: float = 0.002,
        starve_after: float = 0.15,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self.directory = directory
        self.count = count
        self.poll = poll
        self.starve_after = starve_after
        self._clock = clock
        self._sleep = sleep
        self._paths = [os.path.join(directory, f"slot-{index}") for index in range(count)]
        self._waiting_path = os.path.join(directory, "waiting")
        self._next = 0  # where this process tries first, so its threads spread over the files
        self._broken = False
        # Each thread opens the slot files once and keeps them: flock tells
        # open files apart, so two threads of one process exclude each other
        # as two processes do, and a poll is one flock call per slot.
        self._local = threading.local()

    def _fds(self) -> list[int]:
        """This thread's descriptors: one per slot, then the `waiting` file's."""
        fds = getattr(self._local, "fds", None)
        # Opened again in a forked child: inherited descriptors share their
        # open files (and locks) with the parent's.
        if fds is None or self._local.pid != os.getpid():
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            paths = [*self._paths, self._waiting_path]
            fds = [os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600) for path in paths]
            self._local.fds, self._local.pid = fds, os.getpid()
        return fds

    @staticmethod
    def _unlocked(fd: int) -> bool:
        """Is nobody holding a lock on `fd`'s file? Tried exclusively and let go at
        once (a poller that tries it in that instant polls again)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True

    def _someone_waited_long(self) -> bool:
        """Does a waiter that has waited starve_after hold its shared lock on `waiting`?"""
        return not self._unlocked(self._fds()[-1])

    def _say_waited_long(self) -> bool:
        try:
            fcntl.flock(self._fds()[-1], fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # another thread's probe holds it for a moment: next poll
            return False
        return True

    def others_free(self, held: int) -> bool:
        """Is every slot but `held` free (no other hash on the machine)?"""
        return all(self._unlocked(fd) for fd in self._fds()[:-1] if fd != held)

    def try_acquire(self, *, defer: bool = False) -> int | None:
        """A held slot (its file descriptor), or None when every slot is taken
        (or, with `defer`, when a waiter that has waited long may take it)."""
        if defer and self._someone_waited_long():
            return None
        fds = self._fds()
        start = self._next
        self._next = (start + 1) % self.count
        for offset in range(self.count):
            fd = fds[(start + offset) % self.count]  # fds[-1] is `waiting`: never a slot
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            return fd
        return None

    def acquire(self, timeout: float) -> int | None:
        """A held slot within `timeout` seconds, else None (-1: the bound is off)."""
        if self._broken:
            return -1
        started = self._clock()
        deadline = started + timeout
        pause = self.poll
        waited_long = False
        try:
            while True:
                fd = self.try_acquire(defer=not waited_long)
                now = self._clock()
                if fd is not None or now >= deadline:
                    return fd
                if not waited_long and now - started >= self.starve_after:
                    waited_long = self._say_waited_long()
                # Back off (to 4 polls' worth): a long wait costs fewer
                # wake-ups; a waiter that has waited long polls at the base
                # interval, since free slots are left to it.
                self._sleep(min(self.poll if waited_long else pause, deadline - now))
                pause = min(pause * 2, self.poll * 4)
        except OSError as exc:
            self._broken = True
            logger.warning("hashing slots in %s unusable (%s): per-process bound only", self.directory, exc)
            return -1
        finally:
            if waited_long:
                with contextlib.suppress(OSError):
                    fcntl.flock(self._fds()[-1], fcntl.LOCK_UN)

    @staticmethod
    def release(fd: int) -> None:
        if fd >= 0:
            fcntl.flock(fd, fcntl.LOCK_UN)


_machine_slots: MachineSlots | None = None


def machine_slots() -> MachineSlots | None:
    """HASH_MACHINE_SLOTS slots in HASH_SLOTS_DIR (None when 0: off)."""
    global _machine_slots
    count = settings.HASH_MACHINE_SLOTS
    if count <= 0:
        return None
    slots = _machine_slots
    if slots is None or slots.count != count or slots.directory != settings.HASH_SLOTS_DIR:
        slots = _machine_slots = MachineSlots(settings.HASH_SLOTS_DIR, count)
    return slots


@contextmanager
def machine_slot(admission: Admission, timeout: float) -> Iterator[None]:
    """Hold one of the machine's hashing slots for the block; shed
    (QUEUE_TIMEOUT) when none frees up within `timeout` seconds. With every
    other slot free, the block's hashes run on the caller's thread."""
    slots = machine_slots()
    if slots is None:
        yield
        return
    fd = slots.acquire(timeout)
    if fd is None:
        raise admission.shed(QUEUE_TIMEOUT)
    try:
        # The only hash on the machine: it runs on the request's thread (velro.hashpool).
        with inline_when(fd >= 0 and slots.others_free(fd)):
            yield
    finally:
        slots.release(fd)


# --- the request: is its client still there, and how long has it waited? ----------------

# Linux's struct tcp_info: tcpi_state is its first byte, tcpi_last_data_recv
# (milliseconds since the last data arrived) the u32 at offset 52.
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_TCP_INFO_SIZE = 104
_LAST_DATA_RECV = struct.Struct("=I")
_LAST_DATA_RECV_OFFSET = 52
# States in which the peer has closed (FIN received: CLOSE_WAIT) or reset (CLOSE) the connection.
_TCP_CLOSE = 7
_TCP_CLOSE_WAIT = 8
_PEER_GONE = {_TCP_CLOSE, _TCP_CLOSE_WAIT}
# An X-Request-Start older than this is a clock problem, not a queue: ignored.
_HEADER_AGE_MAX_SECONDS = 3600.0


def _socket(environ: Mapping[str, Any]) -> Any:
    sock = environ.get("gunicorn.socket")
    return sock if hasattr(sock, "getsockopt") else None


def _tcp_info(sock: Any) -> tuple[int, int] | None:
    """(tcpi_state, tcpi_last_data_recv ms) of a TCP socket; None elsewhere."""
    if _TCP_INFO is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_SIZE)
    except (OSError, ValueError, TypeError):
        return None  # a Unix socket, a closed one, a stand-in
    if not isinstance(raw, bytes) or len(raw) < _LAST_DATA_RECV_OFFSET + _LAST_DATA_RECV.size:
        return None
    return raw[0], _LAST_DATA_RECV.unpack_from(raw, _LAST_DATA_RECV_OFFSET)[0]


def client_gone(environ: Mapping[str, Any]) -> bool:
    """Has the client closed or reset the connection this request came on?

    Under gunicorn, from the request's socket (`gunicorn.socket`): the TCP
    state (the peer's FIN or RST; works under TLS too), else a non-blocking
    `recv(MSG_PEEK)` that answers b'' once the peer closed. False when it
    cannot tell (no socket: the test client, another server). A client that
    half-closes its side after sending its request counts as gone.
    """
    sock = _socket(environ)
    if sock is None:
        return False
    info = _tcp_info(sock)
    if info is not None:
        return info[0] in _PEER_GONE
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False  # nothing to read: still connected
    except ConnectionError:
        return True  # reset
    except (OSError, ValueError, TypeError):
        return False  # e.g. a TLS socket refuses recv flags: cannot tell
    return data == b""


def _header_start(raw: str) -> float | None:
    """X-Request-Start as epoch seconds: `t=<seconds.millis>` (nginx $msec),
    `t=<microseconds>` (Apache %t) or `<milliseconds>` (Heroku)."""
    value = raw.strip()
    if value.startswith("t="):
        value = value[2:]
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number) or number <= 0:
        return None
    if number > 1e14:
        return number / 1e6
    if number > 1e11:
        return number / 1e3
    return number


def request_age(
    environ: Mapping[str, Any],
    *,
    trust_header: bool = False,
    wall_clock: Clock = time.time,
    perf_clock: Clock = time.perf_counter,
) -> float:
    """Seconds the request has waited since it arrived: the larger of
    - under gunicorn on TCP, the time since its last byte reached this host's
      kernel (TCP_INFO's last_data_recv on gunicorn's socket): it covers the
      accept backlog and gunicorn's thread-pool queue, and not the time a slow
      client took to send its body (that client is there, waiting); elsewhere,
      the time since the request middleware began the request record;
    - with `trust_header` (a trusted proxy in front), the time since the
      proxy's X-Request-Start (its queue too; the clocks must be synchronised:
      a time in the future or more than an hour back is ignored)."""
    ages = [0.0]
    sock = _socket(environ)
    info = _tcp_info(sock) if sock is not None else None
    if info is not None:
        ages.append(info[1] / 1000)
    else:
        record = context.current()
        if record is not None:
            ages.append(perf_clock() - record.started)
    if trust_header:
        start = _header_start(str(environ.get("HTTP_X_REQUEST_START", "")))
        if start is not None:
            age = wall_clock() - start
            if 0 <= age <= _HEADER_AGE_MAX_SECONDS:
                ages.append(age)
    return max(ages)


def request_check(admission: Admission, environ: Mapping[str, Any], *, max_age: float) -> None:
    """Shed (raise Overloaded) a request whose client has gone, or that has
    waited more than `max_age` seconds (0: no age limit)."""
    if client_gone(environ):
        raise admission.shed(CLIENT_GONE)
    if max_age > 0 and request_age(environ, trust_header=settings.TRUSTED_PROXY_COUNT > 0) > max_age:
        raise admission.shed(TOO_OLD)


# --- password hashing ----------------------------------------------------------------------

_password_admission: Admission | None = None
_password_admission_lock = threading.Lock()


def password_admission() -> Admission:
    """This process's Admission for password hashing (HASH_CONCURRENCY slots,
    HASH_QUEUE_MAX waiters for HASH_QUEUE_TIMEOUT_MS), made on first use."""
    global _password_admission
    admission = _password_admission
    if admission is None:
        with _password_admission_lock:
            if _password_admission is None:
                _password_admission = Admission(
                    "password_hash",
                    limit=settings.HASH_CONCURRENCY,
                    queue_max=settings.HASH_QUEUE_MAX,
                    timeout=settings.HASH_QUEUE_TIMEOUT_MS / 1000,
                )
            admission = _password_admission
    return admission


def password_admission_reset() -> None:
    """Forget the instance: the next use builds one from the current settings."""
    global _password_admission
    with _password_admission_lock:
        _password_admission = None


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith("HASH_"):
        password_admission_reset()


setting_changed.connect(_on_setting_changed, dispatch_uid="velro.admission.password")


def admit(request: Any) -> None:
    """Shed a request for password work whose client has gone or that is older
    than HASH_MAX_REQUEST_AGE_MS, before anything else is spent on it."""
    meta = getattr(request, "META", None)
    if meta is not None:
        request_check(password_admission(), meta, max_age=settings.HASH_MAX_REQUEST_AGE_MS / 1000)


def ensure_client(request: Any) -> None:
    """Shed (CLIENT_GONE) a request whose client has gone: called right before
    a write the client would never learn of (a new session)."""
    meta = getattr(request, "META", None)
    if meta is not None and client_gone(meta):
        raise password_admission().shed(CLIENT_GONE)


@contextmanager
def password_hashing(request: Any = None) -> Iterator[None]:
    """A slot for one request's password hashing (a hash, a verify or both).

    With `request`: shed first if its client has gone or it is too old, and
    again if the client left while it waited for the slot. Without (a script,
    a service called without its request): the slot only.
    """
    admission = password_admission()
    meta = getattr(request, "META", None)
    if meta is not None:
        request_check(admission, meta, max_age=settings.HASH_MAX_REQUEST_AGE_MS / 1000)
    started = time.monotonic()
    with admission.slot():
        # The machine's bound, within what is left of the same wait budget.
        left = max(0.0, admission.timeout - (time.monotonic() - started))
        with machine_slot(admission, left):
            if meta is not None and client_gone(meta):
                raise admission.shed(CLIENT_GONE)
            yield
