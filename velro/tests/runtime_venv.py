"""A venv built from requirements.txt alone, cached under var/runtime-venv/.

Shared by velro/tests/test_runtime_install.py (each runtime process started from
it) and velro/tests/test_image.py (the Dockerfile's `pip install` replayed):
one build per content of requirements.txt, pip command and Python, so reruns
are fast and both tests use the very same install.

The base interpreter is one every user can execute when there is one (the image
replay runs the app as an unprivileged user): a Python of the same minor version
whose whole path is world-readable, else this test run's own base interpreter.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "requirements.txt"
CACHE = REPO / "var" / "runtime-venv"
DEFAULT_INSTALL = ("install", "-r", "requirements.txt")
BUILD_TIMEOUT = 1200  # seconds; a cold build here takes ~30 s
# Installed by `python -m venv` itself, not by requirements.txt.
BOOTSTRAP = {"pip", "setuptools", "wheel"}


def _world_executable(path: Path) -> bool:
    """Every directory on the way is world-searchable and the file world-executable."""
    real = path.resolve()
    for part in (real, *real.parents):
        if not part.stat().st_mode & stat.S_IXOTH:
            return False
    return bool(real.stat().st_mode & stat.S_IROTH)


def base_python() -> Path:
    """A base interpreter (not a venv's) of this run's minor version, world-executable if possible."""
    own = Path(getattr(sys, "_base_executable", sys.executable))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [own, Path(f"/usr/local/bin/python{version}"), Path(f"/usr/bin/python{version}")]
    for candidate in candidates:
        if candidate.exists() and _world_executable(candidate):
            return candidate
    return own


def venv_environ(venv: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment where `python`, `pip`, `celery`, `gunicorn` are the venv's, and nothing else leaks in."""
    env = dict(os.environ if base is None else base)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONUSERBASE"):
        env.pop(name, None)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONNOUSERSITE"] = "1"
    return env


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # one build at a time, even across test runs
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def runtime_venv(install_args: Sequence[str] = DEFAULT_INSTALL, requirements: Path = REQUIREMENTS) -> Path:
    """The venv after `pip install <install_args>` run next to a copy of `requirements` (as the
    Dockerfile does after `COPY requirements.txt .`); built once per content, then cached."""
    python = base_python()
    version = subprocess.run(
        [str(python), "-c", "import sys; print(sys.version)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    content = requirements.read_bytes()
    req_key = hashlib.sha256(content).hexdigest()[:16]
    build_key = hashlib.sha256("\0".join([str(python), version, *install_args]).encode()).hexdigest()[:8]
    venv = CACHE / f"{req_key}-{build_key}"
    marker = venv / ".velro-complete"
    with _locked(CACHE / ".lock"):
        if marker.exists():
            return venv
        # Venvs of older requirements are dead weight; an unfinished build is thrown away.
        if CACHE.exists():
            for old in CACHE.iterdir():
                if old.is_dir() and (old == venv or not old.name.startswith(req_key)):
                    shutil.rmtree(old)
        subprocess.run([str(python), "-m", "venv", str(venv)], check=True, timeout=300)
        (venv / "requirements.txt").write_bytes(content)
        result = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", *install_args],
            cwd=venv,
            env={**venv_environ(venv), "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"},
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise AssertionError(
                f"pip {' '.join(install_args)} (requirements.txt alone) failed:\n{result.stdout[-3000:]}\n"
                f"{result.stderr[-3000:]}"
            )
        marker.write_text(f"{version}\npip {' '.join(install_args)}\n")
    return venv


PINS_SCRIPT = r"""
import importlib.metadata as metadata, json, sys
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pins, not_exact = {}, []
for raw in open(sys.argv[1]).read().splitlines():
    line = raw.split("#", 1)[0].strip()
    if not line:
        continue
    requirement = Requirement(line)
    specifiers = list(requirement.specifier)
    if len(specifiers) != 1 or specifiers[0].operator != "==":
        not_exact.append(raw)
    elif requirement.marker is None or requirement.marker.evaluate():  # for THIS interpreter
        pins[canonicalize_name(requirement.name)] = specifiers[0].version
installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
print(json.dumps({"pins": pins, "not_exact": not_exact, "installed": installed}))
"""


def pins_and_installed(venv: Path, requirements: Path = REQUIREMENTS) -> dict:
    """Evaluated in `venv` (environment markers are about its interpreter): `pins` (name -> version
    of the requirements that apply), `not_exact` (lines that are not name==version) and `installed`
    (name -> version, without the venv's own bootstrap tools), names canonical."""
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", PINS_SCRIPT, str(requirements)],
        env=venv_environ(venv),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    report = json.loads(out)
    report["installed"] = {name: version for name, version in report["installed"].items() if name not in BOOTSTRAP}
    return report
