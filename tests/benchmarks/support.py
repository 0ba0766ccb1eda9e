"""Helpers for the benchmark smoke tests: run a benchmark script as a user would, and load
one as a module (its file name would shadow the ``envelope`` package if imported plainly)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType


def run_benchmark(repo_root: Path, script: str, arguments: list[str],
                  json_path: Path) -> tuple[str, dict[str, object]]:
    """Run ``benchmarks/<script>`` with ``--json``; its stdout and the JSON it wrote."""
    completed = subprocess.run(
        [sys.executable, str(repo_root / "benchmarks" / script), *arguments,
         "--json", str(json_path)],
        capture_output=True, text=True, check=False, timeout=300, cwd=repo_root,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout, json.loads(json_path.read_text())


def load_benchmark(repo_root: Path, script: str) -> ModuleType:
    """Import ``benchmarks/<script>`` under a private module name."""
    name = f"_benchmark_{Path(script).stem}"
    spec = importlib.util.spec_from_file_location(name, repo_root / "benchmarks" / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def assert_positive(row: dict[str, object], keys: tuple[str, ...]) -> None:
    for key in keys:
        value = row[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
        assert value > 0, (key, value)
