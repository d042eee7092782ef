"""What a load test's report says about the machine it ran on (the box is shared: say how busy it was)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from typing import Any

from loadtest import BASE_DIR


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_times() -> list[int] | None:
    """The machine's CPU time so far, in ticks (/proc/stat's `cpu` line: user,
    nice, system, idle, iowait, irq, softirq, steal; guest time is in user)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    return [int(value) for value in fields[1:9]]


def steal_pct(before: list[int] | None, after: list[int] | None) -> float | None:
    """Of the CPU time that passed between two cpu_times() samples, the share the
    hypervisor gave to other guests (steal), in %. On a shared host this is what
    makes two runs minutes apart measure different machines."""
    if before is None or after is None:
        return None
    spent = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(spent)
    return round(100.0 * spent[7] / total, 1) if total > 0 else None


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(BASE_DIR), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    ram = ram_bytes()
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable_cpus = os.cpu_count()
    return {
        "nproc": usable_cpus,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "ram_bytes": ram,
        "ram_gib": None if ram is None else round(ram / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "git_commit": git_commit(),
    }
