"""The benchmark's mfa scenario (loadtest.mfa), against a live test server: its rows and figures."""

from __future__ import annotations

import pytest

from loadtest import benchmark
from loadtest.mfa import STEPS, Samples, _row, run_mfa

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _no_limits(settings):
    settings.RATELIMIT_ENABLE = False


def test_a_small_run_verifies_every_user_once(live_server):
    users = [(f"mfa-{i}@example.com", "violet tractor umbrella 42") for i in range(3)]
    rows = {row["step"]: row for row in run_mfa(live_server.url, users, concurrency=2, log=print)}
    assert set(rows) == set(STEPS)
    assert rows["challenge"]["ok"] == 3 and rows["challenge"]["status_counts"] == {"201": 3}, rows["challenge"]
    for step in ("verify", "me", "recovery_verify"):
        assert rows[step]["ok"] == 3 and rows[step]["status_counts"] == {"200": 3}, rows[step]
    assert rows["login"]["ok"] == 6


def test_the_rows_feed_the_figures_and_the_tables():
    samples = Samples()
    for ms in (10.0, 20.0, 30.0):
        for step in STEPS:
            samples.add(step, 200, ms)
    samples.add("verify", 422, 5.0)
    runs = [_row(step, samples, 1.0, 2) for step in STEPS]
    verify = next(row for row in runs if row["step"] == "verify")
    assert verify["p50_ms"] == 20.0 and verify["error_count"] == 1 and verify["status_counts"] == {"200": 3, "422": 1}
    names = [fig["figure"] for fig in benchmark.mfa_figures(runs)]
    assert names[:3] == ["MFA verify (TOTP) p50", "MFA verify (TOTP) p90", "MFA verify (TOTP) p99"]
    assert "login p50 (mfa sequence)" in names and "GET /me p50 (aal2, mfa sequence)" in names
    result = {"figures": benchmark.mfa_figures(runs), "runs": runs}
    assert "mfa:verify" in benchmark.format_runs(result)
    assert "MFA challenge p99 (ms)" in benchmark.format_figures(result)


def test_mfa_is_named_not_run_by_default():
    args = benchmark.parse_args([])
    assert "mfa" not in args.scenarios
    assert benchmark.parse_args(["--scenarios", "mfa", "--mfa-users", "20"]).mfa_users == 20
