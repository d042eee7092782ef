#!/usr/bin/env python3
"""The perf benchmark moved to the loadtest package: `python -m loadtest.benchmark`, same options.

This shim keeps `.venv/bin/python scripts/perf_benchmark.py ...` working: it replaces
itself with `python -m loadtest.benchmark` (the same interpreter and arguments), with
the repository root on PYTHONPATH so it also works from another directory.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    os.execve(
        sys.executable, [sys.executable, "-m", "loadtest.benchmark", *sys.argv[1:]], {**os.environ, "PYTHONPATH": path}
    )
