"""The benchmarks under bench/ import the project only inside their functions (they start
their own servers first), so a module that moved breaks a bench only when it is run.
bench/webhook_load.py imported the dev command from its old place for a while; this
finds such an import without running a bench.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
PROJECT_PACKAGES = {"bench", "executor", "flows", "kwala_site"}


def _project_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) for every `from <project module> import name` anywhere in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PROJECT_PACKAGES:
            found += [(node.module, alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize("bench", sorted(p.name for p in BENCH.glob("*.py")))
def test_every_project_import_in_a_bench_resolves(bench):
    missing = []
    for module_name, name in _project_imports(BENCH / bench):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            missing.append(f"{module_name}: {exc}")
            continue
        if not hasattr(module, name):
            try:
                importlib.import_module(f"{module_name}.{name}")
            except ImportError:
                missing.append(f"{module_name}.{name}")
    assert not missing, missing
