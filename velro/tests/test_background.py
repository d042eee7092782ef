"""velro.background.BufferedWriter, the one buffer-and-flush writer (accounts.touch,
monitoring.audit): coalescing, the bound, a failed write kept for the next flush.
Their own tests cover what they write (accounts/tests/test_login.py,
test_api_keys.py, monitoring/tests/test_audit.py)."""

from __future__ import annotations

import logging

from django.db import DatabaseError

from accounts import touch
from monitoring import audit
from velro.background import BufferedWriter

logger = logging.getLogger("velro.test-background")


class Sink:
    def __init__(self) -> None:
        self.batches: list[dict] = []

    def __call__(self, batch: dict) -> None:
        self.batches.append(dict(batch))


def writer(sink: Sink, **options) -> BufferedWriter:
    return BufferedWriter("velro-test", sink, interval=lambda: 0, logger=logger, **options)


def test_values_under_one_key_are_merged_and_written_once():
    sink = Sink()
    buffer = writer(sink, merge=max)
    buffer.add(3, key="row-1")
    buffer.add(1, key="row-1")  # older: the newer time stays
    buffer.add(2, key="row-2")
    assert buffer.flush() == 2
    assert sink.batches == [{"row-1": 3, "row-2": 2}]
    assert buffer.flush() == 0
    assert buffer.pending() == {}


def test_values_without_a_key_are_all_kept_in_order():
    sink = Sink()
    buffer = writer(sink)
    for value in ("a", "b", "a"):
        buffer.add(value)
    buffer.flush()
    assert list(sink.batches[0].values()) == ["a", "b", "a"]


def test_beyond_max_pending_new_keys_are_dropped_but_known_keys_still_merge():
    sink = Sink()
    buffer = writer(sink, merge=max, max_pending=2)
    buffer.add(1, key="a")
    buffer.add(1, key="b")
    buffer.add(1, key="c")  # dropped
    buffer.add(5, key="a")
    assert buffer.pending() == {"a": 5, "b": 1}


def test_a_failed_write_is_logged_and_kept_ahead_of_what_came_meanwhile(caplog):
    sink = Sink()
    buffer = writer(sink, merge=max, max_pending=3)
    buffer.add(1, key="a")
    buffer.add(1, key="b")

    def requests_meanwhile(batch: dict) -> None:
        buffer.add(7, key="a")  # newer than the batch's
        buffer.add(1, key="c")
        buffer.add(1, key="d")
        raise DatabaseError("database down")

    buffer.write = requests_meanwhile
    with caplog.at_level(logging.WARNING, logger=logger.name):
        assert buffer.flush() == 0
    assert [r.getMessage() for r in caplog.records if r.name == logger.name] == [
        "velro-test: flush failed (DatabaseError); 2 kept for the next flush"
    ]
    assert buffer.pending() == {"a": 7, "b": 1, "c": 1}  # the batch first; the bound holds
    buffer.write = sink
    assert buffer.flush() == 3
    assert sink.batches == [{"a": 7, "b": 1, "c": 1}]


def test_touch_and_audit_use_it():
    assert isinstance(touch.writer, BufferedWriter)
    assert isinstance(audit.writer, BufferedWriter)
