"""What the wheel ships: the service and its simulator, never the chaos suite, and nothing shipped imports it."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]


def shipped_packages() -> set[str]:
    """The packages setuptools puts in the wheel and sdist, from pyproject.toml's own find rule."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    find = config["tool"]["setuptools"]["packages"]["find"]
    return set(find_packages(where=str(ROOT), include=find.get("include", ["*"]), exclude=find.get("exclude", ())))


def test_the_wheel_ships_the_service_and_the_simulator_not_the_chaos_suite() -> None:
    packages = shipped_packages()
    assert {"fullon_ohlcv_service", "fullon_ohlcv_service.simulator", "fullon_ohlcv_service.adapters"} <= packages
    assert not [p for p in packages if "chaos" in p.split(".")], packages
    assert (ROOT / "chaos" / "__main__.py").is_file()  # the suite lives in the checkout, run by scripts/chaos


def test_no_shipped_module_imports_the_chaos_suite() -> None:
    offenders = []
    for path in sorted((ROOT / "fullon_ohlcv_service").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "chaos"
                          or n.startswith("fullon_ohlcv_service.chaos")]
    assert offenders == []
