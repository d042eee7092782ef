"""Smoke test of the perf benchmark (loadtest.benchmark) against the live test server.

It keeps the benchmark working: every scenario/rate row is produced, every
request succeeds, the JSON and PNG outputs exist and have the expected shape.
It never asserts latency: this is a shared, noisy machine.
"""

from __future__ import annotations

import json

import pytest

from loadtest import benchmark, loadgen

ROW_KEYS = {
    "scenario",
    "mode",
    "rate",
    "label",
    "requests",
    "ok",
    "success_rate",
    "achieved_rps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "server_p50_ms",
    "login_p50_floor_ratio",
    "status_counts",
    "errors",
}


@pytest.mark.django_db(transaction=True)
def test_benchmark_runs_every_scenario_and_writes_outputs(live_server, settings, tmp_path):
    settings.RATELIMIT_ENABLE = False

    result = benchmark.run_benchmark(live_server.url, rates=[2], duration=1, concurrency=2, users=2, out_dir=tmp_path)

    assert result["complete"] is True
    rows = {(row["scenario"], row["label"]): row for row in result["rows"]}
    assert set(rows) == {(scenario, label) for scenario in ("login", "refresh", "me") for label in ("2", "sat")}
    for key, row in rows.items():
        assert set(row) >= ROW_KEYS, key
        assert row["requests"] > 0, key
        assert row["success_rate"] == 1.0, (key, row["status_counts"], row["errors"])
        assert row["ok"] == row["requests"], key
        assert set(row["status_counts"]) <= {"200"}, key
    assert rows[("login", "2")]["mode"] == "open"
    assert rows[("login", "2")]["requests"] == 2
    assert rows[("login", "sat")]["mode"] == "saturation"
    assert rows[("login", "sat")]["concurrency"] == 2
    assert rows[("login", "2")]["login_p50_floor_ratio"] is not None
    assert rows[("me", "2")]["login_p50_floor_ratio"] is None

    json_path = tmp_path / "perf_benchmark.json"
    png_path = tmp_path / "perf_benchmark.png"
    assert json_path.is_file()
    assert png_path.is_file()
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    saved = json.loads(json_path.read_text())
    assert {"machine", "floor", "rows", "config", "target", "load_average"} <= set(saved)
    assert {"nproc", "cpu_model", "ram_bytes", "python"} <= set(saved["machine"])
    assert saved["started_at"]
    assert saved["floor"]["algorithm"] == "argon2id"
    assert saved["floor"]["samples"] == 30
    assert saved["floor"]["median_ms"] > 0
    floor = saved["floor"]
    assert floor["median_ms"] == min(floor["before"]["median_ms"], floor["after"]["median_ms"])
    assert len(saved["rows"]) == 6
    assert saved["config"]["rates"] == [2.0]


def test_only_loopback_targets():
    for url in ("http://example.com", "http://10.0.0.5:8000", "ftp://127.0.0.1", "http://192.168.1.1"):
        with pytest.raises(loadgen.TargetError):
            loadgen.check_target(url)
        with pytest.raises(loadgen.TargetError):  # refused before anything is measured
            benchmark.run_benchmark(url, rates=[1], duration=1)
    assert loadgen.check_target("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert loadgen.check_target("http://localhost:1234") == "http://localhost:1234"


def test_server_timing_parsing():
    parse = loadgen.parse_server_timing
    assert parse('db;dur=0.41;desc="2x", hash;dur=21.70, total;dur=23.90') == {"db": 0.41, "hash": 21.7, "total": 23.9}
    assert parse(None) == {}
    assert parse("total;desc=x") == {}
