"""Smoke test of the perf benchmark (loadtest.benchmark) with real processes: Velro's gunicorn
(loadtest.stack), the stock peer (loadtest.peerstack, var/peer-venv created on first use),
wrk, loadtest.rawload and nginx (loadtest.proxy), all with tiny durations.

It keeps the benchmark working: every scenario produces its runs, every request
succeeds, the figures, JSON and PNG have the expected shape. It never asserts
latency or throughput: this is a shared, noisy machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from loadtest import BASE_DIR, benchmark, loadgen, machine, proxy, rawload, wrk
from loadtest.tests.test_rawload import TinyServer

pytestmark = pytest.mark.integration

RUN_KEYS = {
    "target",
    "scenario",
    "mode",
    "rate",
    "connections",
    "requests",
    "ok",
    "success_rate",
    "ok_rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "status_counts",
    "error_count",
}


def _db_url(name: str) -> str:
    return f"postgres://root@127.0.0.1:5432/{name}"


@pytest.fixture
def needs_binaries():
    missing = [name for name in ("wrk", "nginx") if not (shutil.which(name) or os.path.exists(f"/usr/sbin/{name}"))]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing {missing}: scripts/services.sh ensure_wrk / ensure_nginx")
        pytest.skip(f"missing {missing} (apt-get install wrk nginx-light)")


def test_the_benchmark_runs_every_scenario_against_velro_and_the_peer(needs_binaries, tmp_path):
    out = tmp_path / "perf_benchmark.json"
    argv = [
        "--out",
        str(out),
        "--duration",
        "1",
        "--warmup",
        "0",
        "--open-duration",
        "1",
        "--rates",
        "2,4",
        "--overload-factor",
        "1",
        "--overload-duration",
        "1",
        "--many-connections",
        "200",
        "--many-duration",
        "2",
        "--many-ramp-rate",
        "1000",
        "--users",
        "2",
        "--login-connections",
        "2",
        "--me-connections",
        "4",
        "--wrk-threads",
        "1",
        "--floor-samples",
        "3",
        "--database-url",
        _db_url("velro_bench_smoke"),
        "--peer-database-url",
        _db_url("velro_bench_peer_smoke"),
        "--redis-url",
        os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/7"),
    ]
    result = benchmark.run(benchmark.parse_args(argv))

    assert result["complete"] is True, result["notes"]
    runs = {(r["target"], r["scenario"], r["mode"], r["rate"]): r for r in result["runs"]}
    assert {(t, s, m, r if s not in ("overload", "many") else None) for t, s, m, r in runs} == {
        ("velro", "login", "saturation", None),
        ("peer", "login", "saturation", None),
        ("velro", "me", "saturation", None),
        ("peer", "me", "saturation", None),
        ("velro", "health", "saturation", None),
        ("velro", "login", "open", 2.0),
        ("peer", "login", "open", 2.0),
        ("velro", "login", "open", 4.0),
        ("peer", "login", "open", 4.0),
        ("velro", "overload", "overload", None),
        ("velro", "many", "many", None),
    }
    assert len(runs) == 11
    for key, row in runs.items():
        assert set(row) >= RUN_KEYS, key
        assert row["requests"] > 0, key
        assert 0 <= row["cpu_steal_pct"] <= 100, key  # measured around every run on Linux
        assert row["error_count"] == 0, (key, row.get("errors"), row.get("socket_errors"))
        if row["scenario"] == "overload":
            # at 1x the saturation rate it may still shed a few: shed or served, nothing else
            assert set(row["status_counts"]) <= {"200", "503"}, key
            assert row["shed"]["count"] + row["served"]["count"] == row["requests"], key
        else:
            assert row["ok"] == row["requests"], (key, row["status_counts"])
            assert set(row["status_counts"]) == {"200"}, key
    assert runs[("velro", "login", "open", 2.0)]["requests"] == 2
    assert runs[("peer", "login", "open", 4.0)]["requests"] == 4
    many = next(r for r in result["runs"] if r["scenario"] == "many")
    assert many["connections"] == many["connected"] == many["peak_open"] == 200
    assert many["proxy"]["server"] == "nginx"
    assert many["proxy"]["worker_connections"] == proxy.main_directive("worker_connections", "?")

    figures = {f["figure"]: f for f in result["figures"]}
    names = list(figures)
    assert names[0].startswith("argon2id floor")
    assert any(n.startswith("login p50 @ 2 RPS") for n in names)
    assert "login throughput (wrk, saturation)" in figures
    assert "GET /me throughput (wrk, saturation)" in figures
    assert "GET /health throughput (wrk, saturation)" in figures
    assert sum("overload" in n for n in names) == 2
    assert sum("clients via nginx" in n for n in names) == 2
    for fig in result["figures"]:
        assert fig["passed"] in (True, False, None), fig
    me = figures["GET /me throughput (wrk, saturation)"]
    assert me["vs_peer"] == pytest.approx(me["velro"] / me["peer"], rel=1e-2)
    login_p50 = next(f for n, f in figures.items() if n.startswith("login p50"))
    assert login_p50["vs_floor"] == pytest.approx(login_p50["velro"] / result["floor"]["median_ms"], rel=1e-2)

    table = benchmark.format_figures(result).splitlines()
    assert [c.strip() for c in table[0].split("|")[1:-1]] == [
        "figure",
        "Velro",
        "peer",
        "vs peer",
        "vs floor",
        "target",
        "pass",
        "CPU steal %",
    ]
    assert len(table) == 2 + len(result["figures"])
    assert all(
        re.search(r"\| +(PASS|FAIL|-) \| +[0-9.]+( \(!\))? \|$", line) for line in table[2:] if "floor" not in line
    )
    benchmark.format_runs(result)
    benchmark.format_summary(result)

    saved = json.loads(out.read_text())
    assert {"machine", "floor", "figures", "runs", "config", "targets", "load_average", "notes"} <= set(saved)
    assert {"nproc", "cpu_model", "ram_bytes", "python"} <= set(saved["machine"])
    assert saved["floor"]["samples"] == 3
    assert set(saved["floor"]["libraries"]) == {"argon2-cffi", "libsodium"}
    assert saved["targets"]["peer"]["url"].startswith("http://127.0.0.1:")
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_floor_is_the_fastest_verify_of_either_library_before_or_after_the_runs():
    def floor(library, median):
        return {"library": library, "median_ms": median, "samples": 3}

    before = {"argon2-cffi": floor("argon2-cffi", 21.0), "libsodium": floor("libsodium", 18.5)}
    after = {"argon2-cffi": floor("argon2-cffi", 20.0), "libsodium": floor("libsodium", 19.0)}
    combined = benchmark.combine_floors(before, after)
    assert (combined["library"], combined["chosen"], combined["median_ms"]) == ("libsodium", "before", 18.5)
    assert combined["after"] == after["libsodium"]
    assert combined["libraries"]["argon2-cffi"] == {"before": before["argon2-cffi"], "after": after["argon2-cffi"]}


def test_both_libraries_time_the_same_argon2id_verify():
    floors = benchmark.measure_argon2_floors(1)
    assert set(floors) == {"argon2-cffi", "libsodium"}
    assert all(f["samples"] == 1 and f["median_ms"] > 0 and f["memory_cost_kib"] == 19456 for f in floors.values())


def test_wrk_counts_every_status(needs_binaries):
    with TinyServer() as server:
        url = f"http://127.0.0.1:{server.port}"
        ok = wrk.run_wrk(url, "/ok", connections=2, threads=1, duration=1)
        shed = wrk.run_wrk(
            url,
            "/shed",
            method="POST",
            requests=[{"headers": {"Content-Type": "application/json"}, "body": '{"a": "]]"}'}],
            connections=2,
            threads=1,
            duration=1,
        )
    assert ok["requests"] > 0
    assert ok["status_counts"] == {"200": ok["requests"]}
    assert ok["ok"] == ok["requests"]
    assert shed["status_counts"] == {"503": shed["requests"]}
    assert shed["ok"] == 0
    assert shed["ok_rps"] == 0


def test_the_deployed_nginx_main_context_holds_10000_clients():
    text = proxy.MAIN.read_text()
    connections = int(proxy.main_directive("worker_connections", "0"))
    nofile = int(proxy.main_directive("worker_rlimit_nofile", "0"))
    assert connections >= 10240
    assert nofile >= connections
    assert re.search(r"include /etc/nginx/conf\.d/\*\.conf;", text)
    compose = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())
    nginx = compose["services"]["nginx"]
    assert "./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert "./deploy/nginx/velro.conf:/etc/nginx/conf.d/default.conf:ro" in nginx["volumes"]
    assert nginx["ulimits"]["nofile"]["hard"] >= nofile


def test_the_private_nginx_config_is_valid(needs_binaries, tmp_path):
    nginx = proxy.NginxProxy(tmp_path, upstream_port=9)
    nginx.write_config()
    check = subprocess.run(nginx.argv("-t"), capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stderr
    site = (tmp_path / "velro.conf").read_text()
    assert "access_log off;" in site
    assert f"listen 127.0.0.1:{nginx.port};" in site


def test_only_loopback_targets():
    for url in ("http://example.com", "http://10.0.0.5:8000", "ftp://127.0.0.1", "http://192.168.1.1"):
        with pytest.raises(loadgen.TargetError):
            loadgen.check_target(url)
        with pytest.raises(loadgen.TargetError):  # refused before anything is measured
            benchmark.velro_target(url, [])
    assert loadgen.check_target("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"


def test_requests_are_well_formed():
    raw = rawload.request_bytes("POST", "/x", host="127.0.0.1:1", headers={"A": "b"}, body=b"{}")
    assert raw.startswith(b"POST /x HTTP/1.1\r\nHost: 127.0.0.1:1\r\n")
    assert raw.endswith(b"\r\nA: b\r\nContent-Length: 2\r\n\r\n{}")


def test_load_test_stacks_keep_one_secret_key_so_what_their_databases_hold_stays_readable(tmp_path, monkeypatch):
    from loadtest import stack

    monkeypatch.setattr(stack, "SECRET_KEY_FILE", tmp_path / "var" / "loadtest-secret-key")
    first = stack.load_test_secret_key()
    assert stack.load_test_secret_key() == first and len(first) >= 40
    assert (tmp_path / "var" / "loadtest-secret-key").stat().st_mode & 0o777 == 0o600


def test_cpu_steal_is_the_share_of_the_time_between_two_samples_the_host_gave_to_other_guests():
    #         user nice system idle iowait irq softirq steal
    before = [1000, 0, 200, 5000, 10, 0, 5, 100]
    after = [1600, 0, 300, 5200, 10, 0, 5, 400]  # 1,200 ticks passed, 300 of them stolen
    assert machine.steal_pct(before, after) == 25.0
    assert machine.steal_pct(before, before) is None  # no time passed
    assert machine.steal_pct(None, after) is None  # not Linux
    now = machine.cpu_times()
    assert now is not None and len(now) == 8 and all(value >= 0 for value in now)


def test_a_figure_says_how_much_cpu_its_runs_lost_to_the_host_and_the_summary_warns():
    runs = [
        {"target": "velro", "scenario": "me", "mode": "saturation", "ok_rps": 800.0, "cpu_steal_pct": 23.0},
        {"target": "peer", "scenario": "me", "mode": "saturation", "ok_rps": 1200.0, "cpu_steal_pct": 0.5},
    ]
    (me,) = [f for f in benchmark.figures(runs, {"median_ms": 20.0}, None, 2) if f["figure"].startswith("GET /me")]
    assert me["steal_pct"] == 23.0 and me["passed"] is False
    assert "23 (!)" in benchmark.format_figures({"figures": [me]})
    summary = benchmark.format_summary(
        {
            "machine": {"nproc": 2, "cpu_model": "x", "ram_gib": 1, "python": "3.11"},
            "floor": {
                "memory_cost_kib": 1,
                "time_cost": 1,
                "parallelism": 1,
                "median_ms": 20.0,
                "samples": 1,
                "before": {"median_ms": 20.0},
                "after": {"median_ms": 20.0},
            },
            "load_average": {"start": None, "end": None},
            "config": {
                "saturation_tool": "wrk",
                "duration": 1,
                "warmup": 0,
                "login_connections": 1,
                "me_connections": 1,
                "wrk_threads": 1,
                "open_loop_tool": "rawload",
            },
            "elapsed_s": 1,
            "notes": [],
            "runs": runs,
        }
    )
    assert "warning: 1 run(s) lost >= 5% of the CPU time to other guests" in summary
