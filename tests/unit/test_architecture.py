"""The boundaries of STYLE.md that a test can hold: the pure core imports nothing but the standard
library and itself, only `storage/` imports SQLAlchemy, and no module outgrows a screenful or two.
(Moved here from test_lifecycle.py, with the module list following the stage packages.)"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mailbridge"

# the pure core: decisions without I/O; each takes `now` and data, and returns data
PURE = [
    "parse",  # the whole package
    "rules",
    "authres",
    "correlate",
    "lifecycle",
    "agent_commands",
    "fingerprint",
    "envelope",
    "routing",
    "assignment",
    "business_time",
    "sla",
    "mailtext",
    "errors",
]


def _modules(name: str) -> list[Path]:
    path = PACKAGE / name
    return sorted(path.rglob("*.py")) if path.is_dir() else [PACKAGE / f"{name}.py"]


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
    return found


def _pure(mod: str) -> bool:
    parts = mod.split(".")
    if parts[0] in sys.stdlib_module_names or parts[0] == "__future__":
        return True
    return parts[0] == "mailbridge" and len(parts) > 1 and parts[1] in PURE


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_import_only_stdlib_and_each_other(name: str) -> None:
    for path in _modules(name):
        for mod in _imports(path):
            assert _pure(mod), f"{path.relative_to(PACKAGE)} imports {mod}"


def test_only_storage_imports_sqlalchemy() -> None:
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "storage":
            continue
        for mod in _imports(path):
            assert mod.split(".")[0] not in {"sqlalchemy", "alembic"}, f"{rel} imports {mod}"


def test_no_module_outgrows_four_hundred_lines() -> None:
    # migrations are history written once, not code anyone navigates
    sizes = {
        str(path.relative_to(PACKAGE)): len(path.read_text().splitlines())
        for path in PACKAGE.rglob("*.py")
        if "migrations" not in path.parts
    }
    assert {name: n for name, n in sizes.items() if n > 400} == {}
