"""The fault drill (python -m loadtest.drill), CI length: every fault, zero losses.

The drill starts its own isolated stack (a `velro_drill_ci_*` database, two
redis-servers on free ports, gunicorn, a Celery worker and beat, an SMTP
listener), so this test needs no pytest-django database and touches nothing
the other tests use. It runs the module as a subprocess, as an operator would,
with a hard timeout; on failure the assertion message carries the drill's
table and invariant lines, and its logs stay in the test's tmp directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parents[2]
FAULTS = ["cache_redis", "db_stall", "broker_redis", "celery_worker", "gunicorn_worker"]
INVARIANTS = {
    "signups_present",
    "intents_recorded",
    "referrals_credited_once",
    "credited_counts_match",
    "emails_delivered_once",
    "processes_alive",
}
PHASE_KEYS = {"fault", "sent", "2xx", "4xx", "503", "503_without_retry_after", "other_5xx", "no_answer", "worst_ms"}
HARD_TIMEOUT = 300  # seconds; the CI run takes about 70-100 s on a 2-core box


def run_drill(tmp_path: Path, *args: str) -> tuple[int, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "loadtest.drill", *args],
        cwd=BASE_DIR,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=HARD_TIMEOUT)
    except subprocess.TimeoutExpired:
        # SIGTERM: the drill stops its stack and drops its database; then make sure.
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        pytest.fail(f"the drill ran over {HARD_TIMEOUT} s:\n{output[-6000:]}")
    return process.returncode, output


@pytest.mark.integration
def test_short_drill_keeps_the_failure_contract_under_every_fault(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (./scripts/test.sh installs it)")
    out = tmp_path / "drill.json"
    code, output = run_drill(
        tmp_path,
        "--fault-seconds",
        "3",
        "--rps",
        "10",
        "--database",
        f"velro_drill_ci_{os.getpid()}",
        "--run-dir",
        str(tmp_path / "run"),
        "--out",
        str(out),
    )
    assert code == 0, f"drill exit status {code} (logs: {tmp_path / 'run'}):\n{output[-8000:]}"

    report = json.loads(out.read_text())
    assert report["ok"] is True
    phases = report["phases"]
    assert [phase["fault"] for phase in phases] == ["baseline", *FAULTS]
    for phase in phases:
        assert phase.keys() >= PHASE_KEYS
        assert phase["sent"] > 0, phase
        assert phase["other_5xx"] == 0 and phase["503_without_retry_after"] == 0, phase
        assert phase["4xx"] == 0 and phase["timeouts"] == 0, phase
        assert phase["503_outside_stall"] == 0, phase  # 503 only while the database was stalled
        assert phase["ok"] is True, phase["violations"]
    assert {inv["name"] for inv in report["invariants"]} == INVARIANTS
    assert all(inv["ok"] for inv in report["invariants"]), [inv for inv in report["invariants"] if not inv["ok"]]
    assert report["signups"]["created"] > 0 and report["emails_received"] > 0
    assert {entry["fault"] for entry in report["timeline"]} == set(FAULTS)
