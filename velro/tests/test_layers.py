"""The import layering (design card, "Layout"), read from the source with ast.

- velro/ is the project and the platform layer: it imports no app;
- accounts/ imports nothing from referrals/ or notifications/;
- notifications/ imports neither accounts/ nor referrals/;
- no two apps import each other (in either direction): apps announce events through signals.

Every import counts, at module level or inside a function (a lazy import is
still a dependency), relative ones resolved; string references (include("x.urls"),
settings) do not. Tests and migrations are not scanned. Each rule lists all of
its violations at once, file and line.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
APPS = ("accounts", "referrals", "monitoring", "notifications")
SKIPPED_DIRS = {"tests", "migrations", "__pycache__"}


def _modules(package: str) -> list[Path]:
    root = REPO / package
    if not root.is_dir():
        return []
    return sorted(path for path in root.rglob("*.py") if not SKIPPED_DIRS & set(path.relative_to(root).parent.parts))


def _dotted(path: Path) -> list[str]:
    """`accounts/gotrue/views.py` -> ["accounts", "gotrue", "views"] (a package: its __init__ dropped)."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = _dotted(path)
    package = module if path.name == "__init__.py" else module[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
                # `from . import views`: each name may be a module of the package.
                names = [f"{target}.{alias.name}" for alias in node.names] if not node.module else [target]
                found += [(node.lineno, name) for name in names]
            elif node.module:
                found.append((node.lineno, node.module))
    return found


def _edges(package: str) -> list[tuple[str, int, str]]:
    """(file, line, imported top-level app) for each import of another app from `package`."""
    edges = []
    for path in _modules(package):
        for line, name in _imports(path):
            top = name.split(".")[0]
            if top in APPS and top != package:
                edges.append((str(path.relative_to(REPO)), line, top))
    return edges


def _report(edges: list[tuple[str, int, str]]) -> str:
    return "\n".join(f"  {file}:{line} imports {app}" for file, line, app in edges)


FORBIDDEN = {
    "velro": set(APPS),
    "accounts": {"referrals", "notifications"},
    "notifications": {"accounts", "referrals"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_none_of_the_apps_it_must_not_know(package):
    wrong = [edge for edge in _edges(package) if edge[2] in FORBIDDEN[package]]
    assert not wrong, f"{package}/ must not import {', '.join(sorted(FORBIDDEN[package]))}:\n{_report(wrong)}"


@pytest.mark.parametrize(("first", "second"), list(itertools.combinations(APPS, 2)))
def test_no_two_apps_import_each_other(first, second):
    there = [edge for edge in _edges(first) if edge[2] == second]
    back = [edge for edge in _edges(second) if edge[2] == first]
    assert not (there and back), (
        f"{first} and {second} import each other; one direction must go (signals instead):\n"
        f"{_report(there)}\n{_report(back)}"
    )


def test_the_scan_sees_imports_of_every_kind(tmp_path, monkeypatch):
    """The checker itself: absolute, from, relative and function-level imports are all found."""
    package = tmp_path / "velro"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "sample.py").write_text(
        "import accounts.models\n"
        "from referrals import services\n"
        "from . import cache\n"
        "def lazy():\n"
        "    from monitoring.metrics import CACHE\n"
    )
    (package / "tests").mkdir()
    (package / "tests" / "test_x.py").write_text("import notifications\n")
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    assert sorted(app for _, _, app in _edges("velro")) == ["accounts", "monitoring", "referrals"]
    assert "velro.cache" in {name for _, name in _imports(package / "sample.py")}
