"""The process supervisor (loadtest.supervisor) and the old script paths (thin shims)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtest import BASE_DIR
from loadtest.supervisor import PidRegistry, Process, ProcessError, children, free_port


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie is gone too (its parent, the shell, was killed; init reaps it).
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


def _wait_gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def shell(tmp_path: Path, script: str, name: str = "sh", *, banner: bool = False) -> Process:
    return Process(
        name, ["/bin/sh", "-c", script], env=dict(os.environ), log_path=tmp_path / f"{name}.log", banner=banner
    )


def test_stop_terminates_then_kills_the_whole_group(tmp_path):
    # The shell exits on SIGTERM; its background child does not get it: the group SIGKILL takes it.
    proc = shell(tmp_path, 'sleep 60 & echo "child $!"; echo ready; wait').start()
    proc.wait_log("ready", timeout=10)
    child = int(proc.current_log().split("child ", 1)[1].split()[0])
    assert os.getpgid(child) == proc.pid  # its own process group, the child in it
    assert children(proc.pid) == [child]

    proc.stop(timeout=5)

    assert not proc.alive
    assert _wait_gone(child), "the child survived the group's SIGKILL"
    proc.stop()  # again: a no-op


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path):
    proc = shell(tmp_path, 'trap "" TERM; echo ready; while :; do sleep 0.1; done').start()
    proc.wait_log("ready", timeout=10)
    started = time.monotonic()
    proc.stop(timeout=0.5)
    assert not proc.alive
    assert proc.returncode == -9
    assert time.monotonic() - started < 5


def test_wait_reports_an_exit_or_a_timeout_with_the_log(tmp_path):
    proc = shell(tmp_path, "echo broken config; exit 3").start()
    with pytest.raises(ProcessError, match=r"exited \(3\)[\s\S]*broken config"):
        proc.wait_log("ready", timeout=10)

    slow = shell(tmp_path, "echo starting; sleep 60", name="slow", banner=True).start()  # argv in the log
    try:
        with pytest.raises(ProcessError, match=r"'ready' logged not within 0.3 s[\s\S]*starting"):
            slow.wait_log("ready", timeout=0.3)
    finally:
        slow.kill()
    assert not slow.alive


def test_a_restart_appends_to_the_log_and_current_log_is_the_latest_start(tmp_path):
    proc = shell(tmp_path, "echo run-$$; sleep 60", banner=True)

    def started() -> bool:
        return f"run-{proc.pid}" in proc.current_log()

    proc.start().wait_until(started, timeout=10, what="the pid logged")
    first = proc.pid
    proc.kill()
    proc.start().wait_until(started, timeout=10, what="the pid logged")
    try:
        assert f"run-{first}" in proc.log_text()
        assert f"run-{first}" not in proc.current_log()
        assert f"run-{proc.pid}" in proc.current_log()
    finally:
        proc.stop()


def test_the_registry_reaps_the_groups_of_a_killed_run(tmp_path):
    registry = PidRegistry(tmp_path / "pids.json")
    proc = shell(tmp_path, "echo ready; sleep 60")
    proc.registry = registry
    proc.start().wait_log("ready", timeout=10)
    # A new run on the same file: it stops what the earlier one left running.
    assert PidRegistry(tmp_path / "pids.json").reap_stale() == 1
    assert proc.popen.wait(timeout=10) == -9
    assert not (tmp_path / "pids.json").exists()


def test_free_port_is_bindable():
    import socket

    with socket.create_server(("127.0.0.1", free_port())):
        pass


@pytest.mark.parametrize(
    ("script", "module"), [("drill.py", "loadtest.drill"), ("perf_benchmark.py", "loadtest.benchmark")]
)
def test_the_old_script_paths_run_the_package(tmp_path, script, module):
    # From another directory too: the shim puts the repository on PYTHONPATH.
    out = subprocess.run(
        [sys.executable, str(BASE_DIR / "scripts" / script), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert f"python -m {module}" in out.stdout
    assert "--deadline" in out.stdout
