"""The drill's report: the table per fault window, the invariant lines, the stack's log problems."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

LOG_PROBLEM = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback|Soft time limit|Hard time limit|WorkerLostError")
# Expected under the drill's faults: a 503 is logged as an error by Django, a
# dead broker by Celery (worker and beat), the killed worker by gunicorn;
# counted, but not where to look first.
LOG_EXPECTED = re.compile(
    r"Service Unavailable: |Cannot connect to redis|Connection to broker lost|was sent SIGKILL"
    r"|Couldn't apply scheduled task|Couldn't ack"
)


def log_problems(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """ERROR/CRITICAL lines and time-limit kills in the stack's logs, grouped by message shape."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(run_dir.glob("*.log")):
        counts: Counter[str] = Counter()
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not LOG_PROBLEM.search(line):
                continue
            message = re.sub(r"^\d{4}-\d\d-\d\d \S+ |^\[[^]]*\] ", "", line)
            message = re.sub(r"\[[0-9a-f-]{16,}\]|[0-9a-f]{8}-[0-9a-f-]{27}|\b\d+\b", "#", message)[:160]
            counts[message] += 1
        if counts:
            found[path.name] = [
                {"count": n, "line": line, "expected": bool(LOG_EXPECTED.search(line))}
                for line, n in counts.most_common(25)
            ]
    return found


def format_table(result: dict[str, Any]) -> str:
    lines = [
        "| fault | sent | 2xx | 4xx | 503 | other 5xx | no answer | p50 ms | worst ms | result |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in result["phases"]:
        verdict = "ok" if p["ok"] else "FAIL: " + "; ".join(p["violations"])
        if p["notes"]:
            verdict += " (" + "; ".join(p["notes"]) + ")"
        lines.append(
            f"| {p['title']} | {p['sent']} | {p['2xx']} | {p['4xx']} | {p['503']} | {p['other_5xx']} "
            f"| {p['no_answer']} | {p['p50_ms'] if p['p50_ms'] is not None else '-'} "
            f"| {p['worst_ms'] if p['worst_ms'] is not None else '-'} | {verdict} |"
        )
    return "\n".join(lines)


def format_invariants(result: dict[str, Any]) -> str:
    lines = []
    for inv in result["invariants"]:
        mark = "ok  " if inv["ok"] else "FAIL"
        lines.append(f"- {mark} {inv['name']}: {inv['summary']}")
        if not inv["ok"]:
            for key, value in inv.items():
                if key not in {"name", "ok", "summary"} and value:
                    lines.append(f"    {key}: {json.dumps(value, default=str)[:1500]}")
    return "\n".join(lines)


def format_summary(result: dict[str, Any], *, rps: float) -> str:
    """The verdict line and the log lines worth a look."""
    lines = [
        f"{'PASS' if result['ok'] else 'FAIL'}: {result['requests']} requests at {rps:g} RPS, "
        f"{result['signups']['created']} signups, {result['emails_received']} emails, "
        f"{result['duration_s']} s in all (setup {result['setup_s']} s, settle {result['settle']['seconds']} s); "
        f"load average {result['loadavg_before']} -> {result['loadavg_after']} on {result['machine']['nproc']} CPUs"
    ]
    unexpected = [
        f"  {name}: {entry['count']}x {entry['line']}"
        for name, entries in result["log_problems"].items()
        for entry in entries
        if not entry["expected"]
    ]
    if unexpected:
        lines.append("Log lines worth a look (ERROR/CRITICAL/time limits not explained by the faults):")
        lines.extend(unexpected[:15])
    return "\n".join(lines)
