"""The layout's rules (docs/architecture.md): imports run one way, common/ stays Flower-free,
modules stay small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "server", "clients", "simulations")
MAX_MODULE_LINES = 500
# Which top-level packages each package may import (simulations drives the apps; the apps call
# the Flower-free core; nothing imports upwards).
MAY_IMPORT = {
    "common": {"common"},
    "server": {"common", "server"},
    "clients": {"common", "clients"},
    "simulations": {"common", "server", "clients", "simulations"},
}


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported_roots(source: str) -> set[str]:
    """Top-level names of every module imported anywhere in `source` (functions included)."""
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_import_checker_sees_imports_inside_functions() -> None:
    source = "def f():\n    from flwr.app import Message\n    import server.app\n"
    assert imported_roots(source) == {"flwr", "server"}


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_run_one_way(package: str) -> None:
    ours = set(PACKAGES)
    wrong = [f"{path.relative_to(ROOT)} imports {sorted(roots)}"
             for path in modules(package)
             if (roots := (imported_roots(path.read_text()) & ours) - MAY_IMPORT[package])]
    assert wrong == []


def test_common_never_imports_flower() -> None:
    flower = [str(path.relative_to(ROOT)) for path in modules("common")
              if "flwr" in imported_roots(path.read_text())]
    assert flower == []


def test_no_module_outside_tests_is_over_500_lines() -> None:
    long = {str(path.relative_to(ROOT)): lines for package in PACKAGES
            for path in modules(package)
            if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}
