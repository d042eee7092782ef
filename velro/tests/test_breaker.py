"""velro.breaker.Breaker, the one breaker behind the cache, the database and the broker:
driven by an injected clock, no sleeping. Its three users have their own tests
(accounts/tests/test_cache.py, velro/tests/test_db_breaker.py, the enqueue tests)."""

from __future__ import annotations

import logging
import threading

import pytest

from velro import db, tasks
from velro.breaker import Breaker
from velro.cache import safe_cache

LOGGER = "velro.test-breaker"


class Refused(Exception):
    pass


@pytest.fixture
def clock():
    return [1000.0]


@pytest.fixture
def breaker(clock):
    return Breaker(
        "thing",
        cooldown=lambda: 5.0,
        clock=lambda: clock[0],
        logger=logging.getLogger(LOGGER),
        opened="{name} unavailable ({error} during {during}), skipped for {cooldown:.1f}s",
        closed="{name} back",
        ignore=(Refused,),
    )


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_a_failure_opens_it_for_one_cooldown(breaker, clock):
    assert not breaker.open
    assert breaker.trip(ConnectionError(), during="get") is True
    assert breaker.open and breaker.outage
    clock[0] += 4.99
    assert breaker.open
    clock[0] += 0.01
    assert not breaker.open  # the next call goes through...
    assert breaker.outage  # ...but the outage is not over until one succeeds


def test_an_outage_is_logged_once_when_it_begins_and_once_when_it_ends(breaker, clock, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for _ in range(3):  # three cooldowns, one outage
        breaker.trip(ConnectionError(), during="get")
        clock[0] += 5
    assert lines(caplog) == ["thing unavailable (ConnectionError during get), skipped for 5.0s"]
    assert breaker.recover() is True
    assert breaker.recover() is False  # healthy: nothing to end, nothing logged
    assert lines(caplog)[1:] == ["thing back"]
    assert breaker.trip(TimeoutError()) is True  # a new outage
    assert len(lines(caplog)) == 3


def test_ignored_failures_neither_open_nor_extend_it(breaker, clock):
    assert breaker.trip(Refused()) is False
    assert not breaker.open
    breaker.trip(ConnectionError())
    clock[0] += 4
    breaker.trip(Refused())  # our own refusal while open
    clock[0] += 1
    assert not breaker.open


def test_a_zero_cooldown_never_opens_but_still_tracks_the_outage(clock):
    zero = Breaker("thing", cooldown=lambda: 0.0, clock=lambda: clock[0], logger=logging.getLogger(LOGGER))
    assert zero.trip(ConnectionError()) is True
    assert not zero.open
    assert zero.trip(ConnectionError()) is False  # same outage
    assert zero.recover() is True


def test_the_cooldown_is_read_at_each_trip(clock):
    cooldown = [1.0]
    changing = Breaker("thing", cooldown=lambda: cooldown[0], clock=lambda: clock[0], logger=logging.getLogger(LOGGER))
    changing.trip()
    cooldown[0] = 10.0
    clock[0] += 2
    assert not changing.open
    changing.trip()
    clock[0] += 9
    assert changing.open


def test_reset_closes_it_and_ends_the_outage(breaker):
    breaker.trip(ConnectionError())
    breaker.reset()
    assert not breaker.open and not breaker.outage


def test_concurrent_failures_begin_one_outage(breaker):
    firsts: list[bool] = []
    barrier = threading.Barrier(8)

    def fail() -> None:
        barrier.wait()
        firsts.append(breaker.trip(ConnectionError()))

    threads = [threading.Thread(target=fail) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert firsts.count(True) == 1


def test_the_cache_the_database_and_the_broker_share_the_class():
    assert isinstance(safe_cache.breaker, Breaker)
    assert isinstance(db.breaker, Breaker)
    assert isinstance(tasks.breaker, Breaker)
