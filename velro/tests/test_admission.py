"""velro.admission: the bounded slot pool, and the request checks (client gone, age).

The bounded wait runs on an injected clock and wait function: no test sleeps
or measures wall-clock time. Threads are used only where a second holder or
waiter is the point, with generous real timeouts that are never reached.
"""

from __future__ import annotations

import contextvars
import os
import select
import socket
import threading
import time

import pytest

from velro import context
from velro.admission import (
    CLIENT_GONE,
    QUEUE_FULL,
    QUEUE_TIMEOUT,
    TOO_OLD,
    Admission,
    MachineSlots,
    client_gone,
    password_admission,
    password_hashing,
    request_age,
    request_check,
)
from velro.errors import Overloaded
from velro.hashpool import hash_run
from velro.signals import admission_shed

LONG = 30.0  # a real timeout no test reaches
NOW = 1_800_000_002.0  # a fake wall clock (epoch seconds)


class FakeClock:
    """Monotonic seconds that move only when a waiter waits (by what it asked)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wait(self, condition: threading.Condition, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        """A `sleep` that only moves this clock."""
        self.now += seconds


@pytest.fixture
def shed_events():
    events: list[dict] = []

    def receiver(sender, **kwargs):
        events.append({"sender": sender, **kwargs})

    admission_shed.connect(receiver)
    yield events
    admission_shed.disconnect(receiver)


def until(predicate, what: str) -> None:
    """Poll a state another thread reaches (never a duration assertion)."""
    deadline = time.monotonic() + LONG
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.005)


def waiter(pool: Admission, results: list, timeout: float = LONG) -> threading.Thread:
    def run() -> None:
        try:
            with pool.slot(timeout):
                results.append("granted")
        except Overloaded as exc:
            results.append(exc.reason)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# --- the slot pool -----------------------------------------------------------------------------


def test_slots_are_granted_up_to_the_limit_and_released():
    pool = Admission("t", limit=2, queue_max=0, timeout=0)
    with pool.slot():
        with pool.slot():
            assert pool.in_flight == 2
        assert pool.in_flight == 1
    assert pool.in_flight == 0
    assert pool.granted == 2
    assert pool.shed_total == 0


def test_a_full_pool_without_a_queue_sheds_at_once(shed_events):
    clock = FakeClock()
    pool = Admission("t", limit=1, queue_max=0, timeout=0.25, clock=clock, wait=clock.wait)
    with pool.slot(), pytest.raises(Overloaded) as shed:
        pool.acquire(0.25)
    assert shed.value.reason == QUEUE_FULL
    assert shed.value.status == 503 and shed.value.code == "overloaded"
    assert shed.value.headers == {"Retry-After": "2"}
    assert clock.waits == []  # never waited
    assert pool.shed_counts[QUEUE_FULL] == 1
    assert shed_events == [{"sender": Admission, "signal": admission_shed, "name": "t", "reason": QUEUE_FULL}]


def test_sheds_are_logged_once_a_second_per_reason_with_the_count_since(shed_events, caplog):
    clock = FakeClock()
    pool = Admission("t", limit=1, queue_max=0, timeout=0, clock=clock, wait=clock.wait)
    for _ in range(3):
        pool.shed(QUEUE_FULL)
    clock.advance(0.5)
    pool.shed(QUEUE_FULL)
    pool.shed(TOO_OLD)  # another reason has its own line
    clock.advance(0.6)
    pool.shed(QUEUE_FULL)
    assert [r.getMessage() for r in caplog.records if r.name == "velro.admission"] == [
        "admission t: shed (queue_full): 1 since the last line",
        "admission t: shed (too_old): 1 since the last line",
        "admission t: shed (queue_full): 4 since the last line",
    ]
    assert pool.shed_counts[QUEUE_FULL] == 5 and len(shed_events) == 6  # every shed counted and announced


def test_a_shed_inside_a_request_marks_its_record(shed_events):
    pool = Admission("t", limit=1, queue_max=0, timeout=0)
    record = context.begin("r-1")
    pool.shed(CLIENT_GONE)
    assert record.shed


def test_a_waiter_waits_at_most_its_timeout_then_is_shed(shed_events):
    clock = FakeClock()
    pool = Admission("t", limit=1, queue_max=4, timeout=0.25, clock=clock, wait=clock.wait)
    with pool.slot():
        with pytest.raises(Overloaded) as shed:
            pool.acquire(pool.timeout)
        assert pool.waiting == 0  # left the queue
        assert pool.in_flight == 1
    assert shed.value.reason == QUEUE_TIMEOUT
    assert sum(clock.waits) == pytest.approx(0.25)  # the fake clock's time, all of the budget
    assert [event["reason"] for event in shed_events] == [QUEUE_TIMEOUT]
    assert pool.in_flight == 0
    with pool.slot():  # nothing leaked
        assert pool.in_flight == 1


def test_a_zero_timeout_never_waits():
    clock = FakeClock()
    pool = Admission("t", limit=1, queue_max=4, timeout=0, clock=clock, wait=clock.wait)
    with pool.slot(), pytest.raises(Overloaded) as shed:
        pool.acquire(0)
    assert shed.value.reason == QUEUE_FULL
    assert clock.waits == []


def test_a_waiter_gets_the_slot_released_to_it():
    pool = Admission("t", limit=1, queue_max=1, timeout=LONG)
    results: list[str] = []
    pool.acquire(0)
    thread = waiter(pool, results)
    until(lambda: pool.waiting == 1, "the second caller waits")
    pool.release()
    thread.join(LONG)
    assert results == ["granted"]
    assert pool.in_flight == 0 and pool.waiting == 0
    assert pool.granted == 2


def test_beyond_the_max_waiters_callers_are_shed_at_once_without_waiting(shed_events):
    waits: list[str] = []

    def recording_wait(condition: threading.Condition, seconds: float) -> None:
        waits.append(threading.current_thread().name)
        condition.wait(seconds)

    pool = Admission("t", limit=1, queue_max=2, timeout=LONG, wait=recording_wait)
    results: list[str] = []
    pool.acquire(0)
    threads = [waiter(pool, results), waiter(pool, results)]
    until(lambda: pool.waiting == 2, "two callers wait")
    with pytest.raises(Overloaded) as shed:
        pool.acquire(LONG)  # a third: the queue is full
    assert shed.value.reason == QUEUE_FULL
    assert threading.current_thread().name not in waits  # shed without waiting
    assert pool.waiting == 2
    pool.release()
    for thread in threads:
        thread.join(LONG)
    assert results == ["granted", "granted"]
    assert pool.in_flight == 0
    assert pool.shed_counts == {QUEUE_FULL: 1, QUEUE_TIMEOUT: 0, CLIENT_GONE: 0, TOO_OLD: 0}
    assert [event["reason"] for event in shed_events] == [QUEUE_FULL]


def test_a_released_slot_goes_to_the_waiter_not_to_a_newcomer():
    pool = Admission("t", limit=1, queue_max=1, timeout=LONG)
    results: list[str] = []
    entered = threading.Event()
    proceed = threading.Event()

    def first_waiter() -> None:
        with pool.slot(LONG):
            results.append("waiter")
            entered.set()
            proceed.wait(LONG)

    pool.acquire(0)
    thread = threading.Thread(target=first_waiter, daemon=True)
    thread.start()
    until(lambda: pool.waiting == 1, "the waiter queues")
    pool.release()  # handed over: still one in flight, owned by the waiter
    with pytest.raises(Overloaded):
        pool.acquire(0)  # a newcomer cannot barge in
    entered.wait(LONG)
    proceed.set()
    thread.join(LONG)
    assert results == ["waiter"]
    assert pool.in_flight == 0


def test_slots_are_released_when_the_work_raises():
    pool = Admission("t", limit=1, queue_max=0, timeout=0)
    for _ in range(3):
        with pytest.raises(ValueError), pool.slot():
            raise ValueError("the hash blew up")
    assert pool.in_flight == 0
    with pool.slot():
        assert pool.in_flight == 1


def test_a_waiter_interrupted_while_waiting_leaves_the_queue():
    def interrupted(condition: threading.Condition, seconds: float) -> None:
        raise KeyboardInterrupt

    pool = Admission("t", limit=1, queue_max=1, timeout=LONG, wait=interrupted)
    with pool.slot():
        with pytest.raises(KeyboardInterrupt):
            pool.acquire(LONG)
        assert pool.waiting == 0
    assert pool.in_flight == 0


def test_releasing_more_than_was_taken_is_a_bug():
    pool = Admission("t", limit=1, queue_max=0, timeout=0)
    with pytest.raises(RuntimeError):
        pool.release()


def test_an_admission_needs_a_slot():
    with pytest.raises(ValueError):
        Admission("t", limit=0, queue_max=0, timeout=0)


# --- the process's password-hashing admission follows the settings -------------------------


def test_password_admission_is_built_from_the_settings_and_rebuilt_when_they_change(settings):
    settings.HASH_CONCURRENCY = 3
    settings.HASH_QUEUE_MAX = 7
    settings.HASH_QUEUE_TIMEOUT_MS = 125
    first = password_admission()
    assert (first.limit, first.queue_max, first.timeout) == (3, 7, 0.125)
    assert password_admission() is first
    settings.HASH_CONCURRENCY = 1
    assert password_admission().limit == 1


def test_by_default_a_process_may_hash_on_every_core_and_the_machine_on_no_more():
    from velro import settings as velro_settings

    if os.environ.get("HASH_CONCURRENCY", "").strip() or os.environ.get("HASH_MACHINE_SLOTS", "").strip():
        pytest.skip("HASH_CONCURRENCY or HASH_MACHINE_SLOTS is set in this environment")
    assert velro_settings.HASH_CONCURRENCY == velro_settings._CPUS
    assert velro_settings.HASH_MACHINE_SLOTS == velro_settings._CPUS


# --- is the client still there? ----------------------------------------------------------------


@pytest.fixture
def tcp_pair():
    """A connected loopback TCP pair: (client, server side as gunicorn sees it)."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname(), timeout=LONG)
    server, _ = listener.accept()
    listener.close()
    yield client, server
    client.close()
    server.close()


def wait_readable(sock: socket.socket) -> None:
    readable, _, _ = select.select([sock], [], [], LONG)
    assert readable, "the peer's close never arrived"


def test_a_connected_client_is_not_gone(tcp_pair):
    client, server = tcp_pair
    client.sendall(b"POST /login HTTP/1.1\r\n\r\n")
    wait_readable(server)
    assert client_gone({"gunicorn.socket": server}) is False


def test_a_client_that_closed_its_connection_is_gone(tcp_pair):
    client, server = tcp_pair
    client.sendall(b"POST /login HTTP/1.1\r\n\r\n")
    server.recv(1024)  # the server read the request...
    client.close()  # ...and the client left before the answer
    wait_readable(server)
    assert client_gone({"gunicorn.socket": server}) is True


def test_a_client_gone_with_its_request_still_unread_is_gone(tcp_pair):
    client, server = tcp_pair
    client.sendall(b"POST /login HTTP/1.1\r\n\r\n")
    client.close()
    wait_readable(server)
    assert client_gone({"gunicorn.socket": server}) is True


def test_a_unix_socket_is_checked_by_peeking():
    ours, theirs = socket.socketpair()
    try:
        assert client_gone({"gunicorn.socket": ours}) is False
        theirs.close()
        wait_readable(ours)
        assert client_gone({"gunicorn.socket": ours}) is True
    finally:
        ours.close()


def test_without_a_socket_the_client_counts_as_connected():
    assert client_gone({}) is False
    assert client_gone({"gunicorn.socket": object()}) is False


# --- how long has the request waited? ---------------------------------------------------------


def outside_a_request(function, *args, **kwargs):
    """Run in an empty context: no request record left by an earlier test in this thread."""
    return contextvars.Context().run(function, *args, **kwargs)


@pytest.mark.parametrize(
    ("header", "age"),
    [
        ("t=1800000000.500", 1.5),  # nginx: t=${msec}
        ("t=1800000000500000", 1.5),  # Apache: microseconds
        ("1800000000500", 1.5),  # Heroku: milliseconds
        ("t=1800000003.0", 0.0),  # in the future: a clock skew, ignored
        ("t=1799990000.0", 0.0),  # more than an hour back: a clock problem, ignored
        ("garbage", 0.0),
        ("t=nan", 0.0),
    ],
)
def test_request_age_from_a_trusted_proxys_x_request_start(header, age):
    environ = {"HTTP_X_REQUEST_START": header}
    measured = outside_a_request(request_age, environ, trust_header=True, wall_clock=lambda: NOW)
    assert measured == pytest.approx(age)


def test_x_request_start_is_ignored_without_a_trusted_proxy():
    environ = {"HTTP_X_REQUEST_START": "t=1800000000.0"}
    assert outside_a_request(request_age, environ, trust_header=False, wall_clock=lambda: NOW) == 0.0


def test_request_age_counts_from_the_request_record_without_a_tcp_socket():
    def in_a_request() -> float:
        record = context.begin("req-admission-test")
        record.started = 50.0
        return request_age({}, perf_clock=lambda: 50.75)

    assert outside_a_request(in_a_request) == pytest.approx(0.75)


def test_request_age_takes_the_earliest_start_it_knows():
    def in_a_request() -> float:
        record = context.begin("req-admission-test")
        record.started = 50.0
        environ = {"HTTP_X_REQUEST_START": "t=1799999999.0"}
        return request_age(environ, trust_header=True, wall_clock=lambda: NOW, perf_clock=lambda: 50.5)

    assert outside_a_request(in_a_request) == pytest.approx(3.0)


def test_request_age_of_a_fresh_tcp_request_is_known_and_small(tcp_pair):
    client, server = tcp_pair
    client.sendall(b"POST /login HTTP/1.1\r\n\r\n")
    wait_readable(server)
    age = request_age({"gunicorn.socket": server})
    assert 0.0 <= age < LONG


def test_request_check_sheds_a_gone_client_and_an_old_request(settings, tcp_pair, shed_events):
    settings.TRUSTED_PROXY_COUNT = 1
    pool = Admission("t", limit=1, queue_max=0, timeout=0)
    old = {"HTTP_X_REQUEST_START": f"t={time.time() - 60:.3f}"}
    outside_a_request(request_check, pool, old, max_age=0)  # no age limit
    with pytest.raises(Overloaded) as too_old:
        outside_a_request(request_check, pool, old, max_age=2.0)
    assert too_old.value.reason == TOO_OLD
    client, server = tcp_pair
    client.close()
    wait_readable(server)
    with pytest.raises(Overloaded) as gone:
        request_check(pool, {"gunicorn.socket": server}, max_age=2.0)
    assert gone.value.reason == CLIENT_GONE
    assert [event["reason"] for event in shed_events] == [TOO_OLD, CLIENT_GONE]
    assert pool.in_flight == 0  # checks take no slot


# --- machine-wide slots (one lock file per slot) ----------------------------------------------------


def test_machine_slots_are_shared_by_every_holder_and_freed_on_release(tmp_path):
    # Three holders, as three processes (or threads: each opens its own files) would be.
    one, other, third = (MachineSlots(str(tmp_path), 2) for _ in range(3))
    first, second = one.try_acquire(), other.try_acquire()
    assert first is not None and second is not None
    assert third.try_acquire() is None  # both slots taken, whoever asks
    one.release(first)
    fd = third.try_acquire()
    assert fd is not None
    other.release(second)
    third.release(fd)


def test_threads_of_one_process_exclude_each_other_like_processes(tmp_path):
    slots = MachineSlots(str(tmp_path), 1)
    held = slots.try_acquire()
    seen = []
    thread = threading.Thread(target=lambda: seen.append(slots.try_acquire()))
    thread.start()
    thread.join(LONG)
    assert seen == [None]
    slots.release(held)


def test_a_machine_slot_waiter_gives_up_at_its_deadline(tmp_path):
    clock = FakeClock()
    held = MachineSlots(str(tmp_path), 1).try_acquire()
    waiter = MachineSlots(str(tmp_path), 1, poll=0.01, clock=clock, sleep=clock.advance)
    assert waiter.acquire(0.5) is None
    assert clock.now == pytest.approx(1000.5, abs=0.011)  # polled until the deadline, no longer
    MachineSlots.release(held)
    fd = waiter.acquire(0.5)
    assert fd is not None and fd >= 0
    MachineSlots.release(fd)


def _waiter(tmp_path, clock: FakeClock, between_polls) -> MachineSlots:
    """A machine-slot waiter (as another process) whose polls are 10 ms apart on
    `clock`; `between_polls(now)` runs in each pause, as other processes would."""

    def sleep(seconds: float) -> None:
        clock.advance(seconds)
        between_polls(clock.now)

    return MachineSlots(str(tmp_path), 1, poll=0.01, starve_after=0.05, clock=clock, sleep=sleep)


def test_a_slot_freed_after_a_waiter_has_waited_long_goes_to_that_waiter_not_to_a_newcomer(tmp_path):
    """The freeing process's own next hash would otherwise take it at once,
    round after round, until the other process's waiter is shed."""
    clock = FakeClock()
    holder, newcomer = MachineSlots(str(tmp_path), 1), MachineSlots(str(tmp_path), 1)
    held = [holder.try_acquire()]
    newcomer_got = []

    def between_polls(now: float) -> None:
        if now >= 1000.075 and held:  # the waiter has said it waited long (at 1000.07): the slot is freed
            MachineSlots.release(held.pop())
            newcomer_got.append(newcomer.acquire(0.0))

    fd = _waiter(tmp_path, clock, between_polls).acquire(0.5)
    assert newcomer_got == [None]  # it left the free slot to the waiter
    assert fd is not None and fd >= 0
    assert clock.now < 1000.1  # at the waiter's next poll
    assert newcomer.try_acquire(defer=True) is None  # the waiter holds it now
    MachineSlots.release(fd)
    fd = newcomer.try_acquire(defer=True)  # the waiter has stopped saying it waited long
    assert fd is not None
    MachineSlots.release(fd)


def test_before_anyone_has_waited_long_a_newcomer_takes_a_free_slot(tmp_path):
    clock = FakeClock()
    holder, newcomer = MachineSlots(str(tmp_path), 1), MachineSlots(str(tmp_path), 1)
    held = [holder.try_acquire()]
    newcomer_got = []

    def between_polls(now: float) -> None:
        if held:  # freed after the waiter's first poll, well before starve_after
            MachineSlots.release(held.pop())
            newcomer_got.append(newcomer.acquire(0.0))
        if now >= 1000.1 and newcomer_got and newcomer_got[0] is not None:
            MachineSlots.release(newcomer_got.pop())

    fd = _waiter(tmp_path, clock, between_polls).acquire(0.5)
    assert newcomer_got == []  # it had the slot, then gave it back
    assert fd is not None and clock.now >= 1000.1
    MachineSlots.release(fd)


def test_a_waiter_that_gives_up_stops_saying_it_waited_long(tmp_path):
    clock = FakeClock()
    held = MachineSlots(str(tmp_path), 1).try_acquire()
    assert _waiter(tmp_path, clock, lambda now: None).acquire(0.2) is None
    MachineSlots.release(held)
    fd = MachineSlots(str(tmp_path), 1).try_acquire(defer=True)
    assert fd is not None
    MachineSlots.release(fd)


def test_the_only_hash_on_the_machine_runs_on_the_requests_thread_one_beside_another_on_the_nicer_pool(
    settings, tmp_path
):
    settings.HASH_SLOTS_DIR = str(tmp_path)
    settings.HASH_MACHINE_SLOTS = 2
    settings.HASH_NICE = 5
    caller = threading.get_native_id()
    with password_hashing():
        assert hash_run(threading.get_native_id) == caller  # alone on the machine
    elsewhere = MachineSlots(str(tmp_path), 2).try_acquire()  # another process is hashing
    try:
        with password_hashing():
            assert hash_run(threading.get_native_id) != caller
    finally:
        MachineSlots.release(elsewhere)
    # The probe let the other slot go again: both are free.
    one, two = MachineSlots(str(tmp_path), 2).try_acquire(), MachineSlots(str(tmp_path), 2).try_acquire()
    assert one is not None and two is not None
    MachineSlots.release(one)
    MachineSlots.release(two)


def test_a_process_killed_while_holding_a_machine_slot_leaks_nothing(tmp_path):
    import signal
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_SLOT_FOREVER, str(tmp_path / "slot-0")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        slots = MachineSlots(str(tmp_path), 1)
        assert slots.try_acquire() is None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=LONG)
    fd = slots.try_acquire()  # the kernel dropped the dead process's lock
    assert fd is not None
    MachineSlots.release(fd)


def test_unusable_machine_slots_leave_the_per_process_bound_alone(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    slots = MachineSlots(str(blocker / "slots"), 2)  # a directory under a file: ENOTDIR
    assert slots.acquire(0.1) == -1
    assert slots.acquire(0.1) == -1  # warned once, then skipped
    assert [r.levelname for r in caplog.records if r.name == "velro.admission"] == ["WARNING"]


HOLD_SLOT_FOREVER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(600)
"""
