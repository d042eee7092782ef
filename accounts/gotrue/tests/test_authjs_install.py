"""scripts/services.sh's ensure_node_deps, which scripts/test.sh runs before the auth-js tests:
`npm ci` once per lockfile (a re-run never touches the network), one clear line when node or npm
is missing or too old. Driven with stand-in node, npm and apt-get that record their calls."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

FAKE_NODE = """#!/bin/bash
case "$1" in
    --version) echo "v${FAKE_NODE_MAJOR:-20}.1.0" ;;
    -e) printf '%s' "${FAKE_NODE_MAJOR:-20}" ;;
esac
"""

FAKE_NPM = """#!/bin/bash
if [[ "$1" == --version ]]; then echo 10.0.0; exit 0; fi
echo "npm $*" >>"$CALLS"
if [[ "$1" == ci ]]; then
    /bin/rm -rf node_modules && /bin/mkdir node_modules
    exit "${FAKE_NPM_STATUS:-0}"
fi
"""

FAKE_APT_GET = """#!/bin/bash
echo "apt-get $*" >>"$CALLS"
exit 100
"""

# What services.sh itself needs on PATH once node and npm are taken away.
TOOLS = ("cat", "cut", "env", "id", "mktemp", "rm", "sha256sum", "tail")


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def box(tmp_path):
    """A package folder, a bin/ of stand-ins and tools, and a runner of ensure_node_deps there."""
    package = tmp_path / "js"
    package.mkdir()
    (package / "package.json").write_text('{"name": "t", "private": true}\n')
    (package / "package-lock.json").write_text('{"lockfileVersion": 3}\n')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    _script(bin_dir / "apt-get", FAKE_APT_GET)
    calls = tmp_path / "calls"

    def run(**env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                "/bin/bash",
                "-c",
                f'set -euo pipefail; source {REPO}/scripts/services.sh; ensure_node_deps "$1"',
                "-",
                package,
            ],
            env={"PATH": str(bin_dir), "CALLS": str(calls), "HOME": str(tmp_path), **env},
            capture_output=True,
            text=True,
            check=False,
        )

    def calls_made() -> list[str]:
        return calls.read_text().splitlines() if calls.exists() else []

    run.package, run.bin, run.calls = package, bin_dir, calls_made
    return run


def with_node(box) -> None:
    _script(box.bin / "node", FAKE_NODE)
    _script(box.bin / "npm", FAKE_NPM)


def test_npm_ci_runs_once_and_again_only_when_the_lockfile_changes(box):
    with_node(box)
    assert box().returncode == 0
    assert box.calls() == ["npm ci --no-audit --no-fund --loglevel=error"]
    second = box()
    assert second.returncode == 0
    assert "up to date" in second.stderr
    assert len(box.calls()) == 1  # no npm at all: works offline
    (box.package / "package-lock.json").write_text('{"lockfileVersion": 3, "changed": true}\n')
    assert box().returncode == 0
    assert len(box.calls()) == 2


def test_a_failed_npm_ci_fails_the_step_and_leaves_no_stamp(box):
    with_node(box)
    failed = box(FAKE_NPM_STATUS="1")
    assert failed.returncode != 0
    assert failed.stderr.strip().splitlines()[-1] == f"[setup] ERROR: npm ci in {box.package} failed"
    assert box().returncode == 0
    assert len(box.calls()) == 2  # retried: the failure left no stamp


@pytest.mark.skipif(os.geteuid() != 0, reason="the apt-get path runs as root (or through sudo)")
def test_without_node_it_tries_apt_get_then_fails_with_one_clear_line(box):
    failed = box()
    assert failed.returncode != 0
    assert failed.stderr.strip().splitlines()[-1] == (
        f"[setup] ERROR: node and npm are needed for the @supabase/auth-js tests ({box.package}):"
        " install Node.js >= 20 with npm"
    )
    assert box.calls() == ["apt-get update -qq"]  # the stand-in apt-get fails; nothing installed


def test_a_node_older_than_18_fails_with_one_clear_line(box):
    with_node(box)
    failed = box(FAKE_NODE_MAJOR="16")
    assert failed.returncode != 0
    assert failed.stderr.strip().splitlines()[-1] == (
        "[setup] ERROR: node v16.1.0 is too old for the @supabase/auth-js tests: install Node.js >= 20"
    )
    assert box.calls() == []
