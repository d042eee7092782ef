"""Password hashes run on pool threads at a lower CPU priority (velro/hashpool.py)."""

from __future__ import annotations

import os
import threading

import pytest
from django.contrib.auth.hashers import Argon2PasswordHasher

from accounts import hashers
from accounts.hashers import Argon2idPasswordHasher
from velro.hashpool import hash_run, inline_when


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.fixture(autouse=True)
def nice(settings):
    settings.HASH_NICE = 5
    return settings


def test_a_hash_runs_on_a_thread_nicer_than_the_callers():
    caller = _nice()
    assert hash_run(_nice) == min(19, caller + 5)
    assert _nice() == caller  # the request's thread keeps its priority


def test_the_hash_threads_are_the_pools_and_few():
    names = {hash_run(lambda: threading.current_thread().name) for _ in range(20)}
    assert all(name.startswith("velro-hash") for name in names)
    assert threading.get_native_id() not in {hash_run(threading.get_native_id) for _ in range(5)}


def test_with_hash_nice_0_the_hash_runs_on_the_callers_thread(settings):
    settings.HASH_NICE = 0
    assert hash_run(threading.get_native_id) == threading.get_native_id()


def test_inside_inline_when_alone_the_hash_runs_on_the_callers_thread_and_at_its_priority():
    caller = threading.get_native_id()
    with inline_when(True):
        assert hash_run(threading.get_native_id) == caller
        assert hash_run(_nice) == _nice()
        with inline_when(False):  # nested: the inner answer holds inside it
            assert hash_run(threading.get_native_id) != caller
        assert hash_run(threading.get_native_id) == caller
    assert hash_run(threading.get_native_id) != caller


def test_an_exception_of_the_work_reaches_the_caller():
    def fails() -> None:
        raise ValueError("bad hash")

    with pytest.raises(ValueError, match="bad hash"):
        hash_run(fails)


def test_a_forked_child_hashes_on_threads_of_its_own():
    hash_run(_nice)  # the parent's pool exists
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        try:
            os._exit(0 if hash_run(threading.current_thread) is not threading.current_thread() else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_argon2id_hasher_verifies_and_encodes_on_a_hash_thread(monkeypatch):
    threads = []

    def recording(real):
        def wrapper(*args):
            threads.append(threading.current_thread().name)
            return real(*args)

        return wrapper

    # Encoded by argon2-cffi (Django's hasher), verified by libsodium (accounts.hashers).
    monkeypatch.setattr(hashers, "crypto_pwhash_str_verify", recording(hashers.crypto_pwhash_str_verify))
    monkeypatch.setattr(Argon2PasswordHasher, "encode", recording(Argon2PasswordHasher.encode))
    hasher = Argon2idPasswordHasher()
    encoded = hasher.encode("correct horse", hasher.salt())
    assert hasher.verify("correct horse", encoded)
    assert not hasher.verify("wrong horse", encoded)
    assert len(threads) == 3 and all(name.startswith("velro-hash") for name in threads)
