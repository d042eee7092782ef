"""The SLO alert rules (monitoring/prometheus/alerts.yml), and the compose wiring around them.

promtool checks the rules and the Prometheus config, and runs the rules' unit
tests (alerts.test.yml): the alerts fire, or stay quiet, on synthetic series.
A copy of the rules with a wrong threshold must fail those unit tests, so they
are bound to the thresholds, which must equal the SLO_* settings that
/admin/slo/ uses. promtool is Debian's `prometheus` package (scripts/services.sh
ensure_promtool); without it these tests skip, or fail under CI=true.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from prometheus_client.metrics import MetricWrapperBase

from monitoring import metrics, slo

REPO = Path(settings.BASE_DIR)
PROMETHEUS = REPO / "monitoring" / "prometheus"
GRAFANA = REPO / "monitoring" / "grafana"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "alerts.test.yml"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool not found: apt-get install prometheus (scripts/services.sh: ensure_promtool)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def rules() -> dict[str, dict]:
    """Every rule of alerts.yml by its alert or record name."""
    loaded = yaml.safe_load(RULES.read_text())
    return {rule.get("alert") or rule["record"]: rule for group in loaded["groups"] for rule in group["rules"]}


# --- promtool ------------------------------------------------------------------------------------------


def test_promtool_checks_the_rules():
    result = run_promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout + result.stderr


def test_promtool_checks_the_prometheus_config():
    result = run_promtool("check", "config", "--syntax-only", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_fire_on_synthetic_series():
    result = run_promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("alert", "threshold", "wrong"),
    [
        ("VelroAuthLatencyP95High", "> 0.5", "> 0.8"),
        ("VelroAuthLatencyP95Critical", "> 1", "> 2"),
        ("VelroAuthSuccessRateLow", "< 0.99", "< 0.9"),
    ],
)
def test_the_rule_unit_tests_catch_a_wrong_threshold(tmp_path, alert, threshold, wrong):
    loaded = yaml.safe_load(RULES.read_text())
    for group in loaded["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                assert rule["expr"].endswith(threshold), rule["expr"]
                rule["expr"] = rule["expr"].removesuffix(threshold) + wrong
    (tmp_path / RULES.name).write_text(yaml.safe_dump(loaded))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = run_promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0, result.stdout + result.stderr
    assert alert in result.stdout + result.stderr


def test_prometheus_and_monitoring_slo_compute_the_same_percentiles(tmp_path):
    """The same histogram through promtool's histogram_quantile and slo.histogram_quantile."""
    per_minute = {0.005: 3, 0.01: 13, 0.025: 43, 0.05: 63, 0.1: 78, 0.25: 88, 0.5: 94, 1.0: 97, 2.5: 99, math.inf: 100}
    series = [
        {
            "series": "velro_http_request_duration_seconds_bucket"
            f'{{route="/api/v1/auth/login",method="POST",le="{"+Inf" if math.isinf(le) else le}"}}',
            "values": f"0+{count}x10",
        }
        for le, count in per_minute.items()
    ]
    tests = []
    for quantile in ("p50", "p95", "p99"):
        expected = slo.histogram_quantile(int(quantile[1:]) / 100, per_minute)
        tests.append(
            {
                "expr": f"round(velro:auth_request_duration_seconds:{quantile}_5m * 1e6)",
                "eval_time": "10m",
                "exp_samples": [{"labels": '{route="/api/v1/auth/login"}', "value": round(expected * 1e6)}],
            }
        )
    shutil.copy(RULES, tmp_path / RULES.name)
    spec = {
        "rule_files": [RULES.name],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}],
    }
    (tmp_path / "quantiles.test.yml").write_text(yaml.safe_dump(spec))
    result = run_promtool("test", "rules", "quantiles.test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the rules and the settings ------------------------------------------------------------------------


def test_the_alert_thresholds_are_the_slo_settings():
    by_name = rules()
    assert by_name["VelroAuthLatencyP95High"]["expr"].endswith(f"> {settings.SLO_P95_WARNING_MS / 1000:g}")
    assert by_name["VelroAuthLatencyP95Critical"]["expr"].endswith(f"> {settings.SLO_P95_CRITICAL_MS / 1000:g}")
    assert by_name["VelroAuthSuccessRateLow"]["expr"].endswith(f"< {settings.SLO_SUCCESS_RATE_MIN:g}")
    assert {rule["labels"]["severity"] for rule in by_name.values() if "alert" in rule} == {"warning", "critical"}


def test_the_latency_thresholds_are_histogram_bucket_bounds():
    """So "p95 above the threshold" is exact, not an interpolation inside a bucket."""
    for threshold_ms in (settings.SLO_P95_WARNING_MS, settings.SLO_P95_CRITICAL_MS):
        assert threshold_ms / 1000 in metrics.LATENCY_BUCKETS, threshold_ms


def test_the_rules_select_the_endpoints_monitoring_slo_tracks():
    """PromQL regexes are anchored at both ends: re.fullmatch."""
    expr = rules()["velro:auth_requests:rate5m"]["expr"]
    included = re.search(r'route=~"([^"]+)"', expr).group(1)
    excluded = re.search(r'route!~"([^"]+)"', expr).group(1)
    for name in ("velro:auth_request_duration_seconds:p50_5m", "velro:auth_success_ratio:5m"):
        assert f'route=~"{included}", route!~"{excluded}"' in rules()[name]["expr"], name
    routes = [
        "/api/v1/auth/login",
        "/api/v1/auth/me",
        "/api/v1/auth/api-keys/<uuid:key_id>",
        "/auth/v1/token",
        "/auth/v1/user",
        "/api/v1/auth/ping",
        "/api/v1/auth/middleware-status",
        "/auth/v1/health",
        "/health",
        "/metrics",
        "/admin/",
        "/api/v1/referrals/",
        "unmatched",
    ]
    for route in routes:
        selected = bool(re.fullmatch(included, route)) and not re.fullmatch(excluded, route)
        assert selected == slo.tracked(route), route


# --- compose, Prometheus and Grafana wiring ---------------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def bind_mounts(service: dict) -> dict[str, Path]:
    """Container path -> repository path of the service's ./ bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = REPO / source
    return mounts


def test_compose_mounts_the_prometheus_config_rules_and_entrypoint():
    services = compose()["services"]
    prometheus = services["prometheus"]
    mounts = bind_mounts(prometheus)
    assert mounts["/etc/prometheus"] == PROMETHEUS
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert prometheus["entrypoint"][-1] == "/etc/prometheus/entrypoint.sh"
    assert (PROMETHEUS / "entrypoint.sh").is_file()
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert [PROMETHEUS / name for name in config["rule_files"]] == [RULES]
    # The scrape target is the web service, on the port gunicorn binds.
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in services
    assert services[host]["environment"]["BIND"].endswith(f":{port}")
    assert host in services[host]["environment"]["DJANGO_ALLOWED_HOSTS"].split(",")


def test_prometheus_scrapes_with_the_metrics_token_the_web_service_checks():
    services = compose()["services"]
    prometheus = services["prometheus"]
    job = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"][0]
    credentials = job["authorization"]["credentials_file"]
    assert job["authorization"].get("type", "Bearer") == "Bearer"
    tmpfs = [mount.split(":")[0] for mount in prometheus["tmpfs"]]
    assert any(credentials.startswith(mount.rstrip("/") + "/") for mount in tmpfs), credentials
    entrypoint = (PROMETHEUS / "entrypoint.sh").read_text()
    assert f"printf '%s' \"$METRICS_TOKEN\" >{credentials}" in entrypoint
    assert 'exec /bin/prometheus "$@"' in entrypoint
    for app in ("web", "worker", "beat"):
        assert services[app]["environment"]["METRICS_TOKEN"] == prometheus["environment"]["METRICS_TOKEN"], app


def test_the_entrypoint_refuses_to_start_without_a_token(tmp_path):
    script = (PROMETHEUS / "entrypoint.sh").read_text().replace("/run/velro/", f"{tmp_path}/")
    script = script.replace("exec /bin/prometheus", "exec echo prometheus")
    (tmp_path / "entrypoint.sh").write_text(script)
    env = {"PATH": os.environ["PATH"]}
    missing = subprocess.run(["sh", str(tmp_path / "entrypoint.sh")], env=env, capture_output=True, text=True)
    assert missing.returncode == 1
    assert "METRICS_TOKEN is not set" in missing.stderr
    started = subprocess.run(
        ["sh", str(tmp_path / "entrypoint.sh"), "--config.file=x"],
        env={**env, "METRICS_TOKEN": "t0k3n"},
        capture_output=True,
        text=True,
    )
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "prometheus --config.file=x"
    assert (tmp_path / "metrics_token").read_text() == "t0k3n"
    assert (tmp_path / "metrics_token").stat().st_mode & 0o077 == 0


def test_compose_provisions_grafanas_data_source_and_dashboard():
    services = compose()["services"]
    mounts = bind_mounts(services["grafana"])
    assert mounts["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    host_port = source["url"].removeprefix("http://")
    assert host_port.split(":")[0] == "prometheus" and "prometheus" in services
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "velro.yml").read_text())
    (provider,) = providers["providers"]
    assert mounts[provider["options"]["path"]] == GRAFANA / "dashboards"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (GRAFANA / "dashboards" / Path(home).name).is_file()
    assert home.startswith(provider["options"]["path"] + "/")
    for name in ("prometheus-data", "grafana-data"):
        assert name in compose()["volumes"]


def exposed_names() -> set[str]:
    """The series names /metrics exposes (monitoring/metrics.py) and the recording rules' names."""
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            base = value._name
            names |= {
                "counter": {f"{base}_total"},
                "histogram": {f"{base}_bucket", f"{base}_count", f"{base}_sum"},
            }.get(value._type, {base})
    return names | {name for name, rule in rules().items() if "record" in rule}


def test_every_dashboard_query_uses_a_series_that_exists():
    dashboard = json.loads((GRAFANA / "dashboards" / "velro.json").read_text())
    known = exposed_names()
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 8
    alerts = [name for name, rule in rules().items() if "alert" in rule]
    for expr in exprs:
        if expr.startswith("count(ALERTS{"):
            pattern = re.search(r'alertname=~"([^"]+)"', expr).group(1)
            assert [name for name in alerts if re.fullmatch(pattern, name)] == alerts, expr
            continue
        used = set(re.findall(r"velro[a-z0-9_:]*", expr))
        assert used, expr
        assert used <= known, (expr, used - known)
    uids = {target["datasource"]["uid"] for panel in dashboard["panels"] for target in panel.get("targets", [])}
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert uids == {datasources["datasources"][0]["uid"]}
    for rule in ("p95_5m", "success_ratio"):
        assert any(rule in expr for expr in exprs), rule
