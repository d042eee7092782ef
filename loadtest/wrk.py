"""Closed-loop saturation runs with wrk (Debian's `wrk`, C + LuaJIT): the throughput ceiling,
measured by a client that costs the server's cores as little as possible.

    run = run_wrk("http://127.0.0.1:8000", "/api/v1/auth/me", method="GET",
                  requests=[{"headers": {"Authorization": "Bearer ..."}}], connections=32, duration=10)

Every run uses one generated Lua script: `request()` sends the given requests
round-robin (a body and headers each, e.g. one login per benchmark user),
`response()` counts statuses per wrk thread, and `done()` prints one JSON line
with the totals, the status counts and the latency percentiles (wrk's own
histogram, microseconds -> ms). Throughput counts 2xx answers only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from loadtest import LoadTestError

MARKER = "WRK_JSON "
PERCENTILES = (50, 90, 95, 99, 99.9)


class WrkError(LoadTestError):
    """wrk is missing or its run failed."""


def wrk_binary() -> str:
    found = shutil.which("wrk") or ("/usr/bin/wrk" if os.path.exists("/usr/bin/wrk") else None)
    if found is None:
        raise WrkError("wrk not found: apt-get install wrk (scripts/services.sh ensure_wrk)")
    return found


def wrk_version() -> str:
    out = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True, timeout=10, check=False)
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else "wrk"


def _lua_string(text: str) -> str:
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def lua_script(method: str, requests: Sequence[dict[str, Any]]) -> str:
    """The Lua of one run: round-robin requests, per-thread status counts, a JSON report."""
    entries = []
    for spec in requests:
        headers = ", ".join(f"[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in (spec.get("headers") or {}).items())
        body = spec.get("body")
        body_lua = "nil" if body is None else _lua_string(body)
        entries.append(f"  {{headers = {{{headers}}}, body = {body_lua}}},")
    specs = "\n".join(entries)
    percentiles = ", ".join(str(p) for p in PERCENTILES)
    return f"""
local specs = {{
{specs}
}}
local method = {_lua_string(method)}
local threads = {{}}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  statuses = {{}}
  reqs = {{}}
  for i, spec in ipairs(specs) do
    reqs[i] = wrk.format(method, nil, spec.headers, spec.body)
  end
  idx = tid or 0
end

function request()
  idx = idx + 1
  return reqs[(idx % #reqs) + 1]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {{}}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    if s then
      for k, v in pairs(s) do counts[k] = (counts[k] or 0) + v end
    end
  end
  local parts = {{}}
  for k, v in pairs(counts) do table.insert(parts, string.format('"%d": %d', k, v)) end
  local pcts = {{}}
  for _, p in ipairs({{{percentiles}}}) do
    table.insert(pcts, string.format('"%s": %.3f', tostring(p), latency:percentile(p) / 1000.0))
  end
  local e = summary.errors
  io.write(string.format(
    '{MARKER}{{"requests": %d, "duration_us": %d, "bytes": %d, "statuses": {{%s}}, "percentiles_ms": {{%s}}, '
    .. '"mean_ms": %.3f, "max_ms": %.3f, "errors": {{"connect": %d, "read": %d, "write": %d, "status": %d, '
    .. '"timeout": %d}}}}\\n',
    summary.requests, summary.duration, summary.bytes, table.concat(parts, ", "), table.concat(pcts, ", "),
    latency.mean / 1000.0, latency.max / 1000.0, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def run_wrk(
    base_url: str,
    path: str,
    *,
    method: str = "GET",
    requests: Sequence[dict[str, Any]] | None = None,
    connections: int = 32,
    threads: int = 2,
    duration: float = 10.0,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """One closed-loop wrk run; returns the parsed report plus the derived figures."""
    parts = urlsplit(base_url)
    if parts.scheme != "http":
        raise WrkError(f"wrk runs here against http:// only, got {base_url!r}")
    threads = max(1, min(threads, connections))
    seconds = max(1, round(duration))
    script = lua_script(method, list(requests or [{}]))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script)
        script_path = fh.name
    argv = [
        wrk_binary(),
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        f"{max(1, round(timeout))}s",
        "-s",
        script_path,
        base_url.rstrip("/") + path,
    ]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + timeout + 30, check=False)
    except subprocess.TimeoutExpired:
        raise WrkError(f"wrk did not finish: {' '.join(argv)}") from None
    finally:
        os.unlink(script_path)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith(MARKER)), None)
    if out.returncode != 0 or line is None:
        raise WrkError(f"wrk failed ({out.returncode}): {out.stderr.strip()[-500:]} {out.stdout.strip()[-500:]}")
    report = json.loads(line[len(MARKER) :])
    elapsed = report["duration_us"] / 1e6
    statuses = {str(k): v for k, v in sorted(report["statuses"].items())}
    ok = sum(v for k, v in statuses.items() if k.startswith("2"))
    socket_errors = {k: v for k, v in report["errors"].items() if k != "status" and v}
    return {
        "tool": "wrk",
        "connections": connections,
        "threads": threads,
        "duration_s": round(elapsed, 3),
        "requests": report["requests"],
        "ok": ok,
        "ok_rps": round(ok / elapsed, 2) if elapsed > 0 else 0.0,
        "rps": round(report["requests"] / elapsed, 2) if elapsed > 0 else 0.0,
        "status_counts": statuses,
        "socket_errors": socket_errors,
        "p50_ms": report["percentiles_ms"].get("50"),
        "p90_ms": report["percentiles_ms"].get("90"),
        "p99_ms": report["percentiles_ms"].get("99"),
        "mean_ms": round(report["mean_ms"], 3),
        "max_ms": round(report["max_ms"], 3),
        "percentiles_ms": report["percentiles_ms"],
        "argv": [a for a in argv if a != script_path],
    }
