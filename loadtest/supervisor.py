"""One process supervisor: a subprocess in its own process group, with a log file.

    proc = Process("celery-worker", argv, env=env, log_path=run_dir / "celery-worker.log")
    proc.start()
    proc.wait_log(" ready.", timeout=90)          # or proc.wait_until(predicate, ...)
    ...
    proc.stop()                                   # SIGTERM, then SIGKILL to the whole group

Every process starts in a new session (its own process group), so `stop()` and
`kill()` reach the children it forked too (gunicorn's and Celery's workers);
its stdout and stderr go to `log_path`. A restarted process appends to the same
log after a banner line, and `current_log()` is the part since the latest start.

Used by the load tests' stack (loadtest.stack) and by the integration tests
(velro/tests/support.py GunicornServer). `PidRegistry` remembers the groups a
run started on disk, so that the next run can stop what a SIGKILLed one left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from loadtest import BASE_DIR, LoadTestError

HOST = "127.0.0.1"
BANNER = "===== [loadtest] start #"


class ProcessError(LoadTestError):
    """A supervised process exited, or was not ready in time."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class Process:
    """A subprocess with its own log file, in its own process group.

    `banner`: write a `===== [loadtest] start #n: argv` line to the log before
    each start (what `current_log()` splits on); `fresh_log`: truncate the log at
    the first start (a restart always appends).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        log_path: Path,
        cwd: Path = BASE_DIR,
        banner: bool = True,
        fresh_log: bool = True,
        registry: PidRegistry | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(arg) for arg in argv]
        self.env = env
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.banner = banner
        self.fresh_log = fresh_log
        self.registry = registry
        self.popen: subprocess.Popen | None = None
        self.starts = 0
        self._group_gone = True  # nothing of the latest start may still run: never signal that group again

    def __repr__(self) -> str:
        return f"<Process {self.name} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def start(self) -> Process:
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        mode = "wb" if self.fresh_log and self.starts == 1 else "ab"
        with self.log_path.open(mode) as fh:
            if self.banner:
                fh.write(f"\n{BANNER}{self.starts}: {' '.join(self.argv)}\n".encode())
                fh.flush()
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: killpg reaches its children too
            )
        self._group_gone = False
        if self.registry is not None:
            self.registry.add(self.popen.pid)
        return self

    # the log

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def current_log(self) -> str:
        """The log since the latest start (the whole log without banners)."""
        return self.log_text().rsplit(BANNER, 1)[-1]

    # readiness

    def wait_until(self, ready: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.1) -> None:
        """Poll `ready()` until it is true; ProcessError when the process exits or after `timeout` s."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.alive:
                raise ProcessError(f"{self.name} exited ({self.returncode}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ProcessError(f"{self.name}: {what} not within {timeout:g} s:\n{self.log_tail()}")
            time.sleep(interval)

    def wait_log(self, needle: str, *, timeout: float) -> None:
        """Wait until the log since the latest start contains `needle`."""
        self.wait_until(lambda: needle in self.current_log(), timeout=timeout, what=f"{needle!r} logged")

    # stopping

    def _killpg(self, sig: int) -> None:
        # Once the group has been SIGKILLed and its leader reaped, its id may be
        # reused by another process group: it is never signalled again.
        if self.popen is not None and not self._group_gone:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a crash: nothing shuts down cleanly)."""
        if self.popen is None:
            return
        self._killpg(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
            self._group_gone = True

    def terminate(self) -> None:
        """SIGTERM to the leader only (gunicorn and Celery shut their children down themselves)."""
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, wait up to `timeout` s, then SIGKILL to the whole group (whatever is left of it)."""
        if self.popen is None:
            return
        if self.alive:
            self.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        self._killpg(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
            self._group_gone = True


# --- /proc --------------------------------------------------------------------------------------


def start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): with the pid, its identity."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[19]
    except (OSError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may contain spaces and parentheses.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry))
    return sorted(found)


class PidRegistry:
    """The process groups a run started, on disk (e.g. run dir / pids.json).

    A run that is itself SIGKILLed cannot stop its processes; the next run on
    the same file reaps what is left (only processes whose pid *and* start time
    match, so a recycled pid is never touched).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, str] = {}

    def reap_stale(self) -> int:
        try:
            stale = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 0
        reaped = 0
        for pid, started in stale.items() if isinstance(stale, dict) else ():
            if str(pid).isdigit() and start_time(int(pid)) == started:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(pid), signal.SIGKILL)
                    reaped += 1
        self.path.unlink(missing_ok=True)
        return reaped

    def add(self, pid: int) -> None:
        started = start_time(pid)
        if started is not None:
            self.entries[str(pid)] = started
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.entries), encoding="utf-8")

    def clear(self) -> None:
        self.entries.clear()
        self.path.unlink(missing_ok=True)
