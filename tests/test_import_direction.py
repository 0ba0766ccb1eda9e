"""The rooms import only in the direction of DESIGN.md and docs/CONTRACTS.md.

``envelope`` imports nothing of ours; ``keybroker`` and ``enclave_workers`` stand on
``envelope`` and never import Beam, ``transforms`` or ``pipelines``; ``enclave_workers`` may use
``keybroker``'s client and its pure protocol/attestation modules, never the broker's service,
KMS, ledger, policy or configuration (where keys and decisions live); ``transforms`` never
imports ``pipelines``. Every ``import``/``from ... import`` (also inside functions, and
``importlib.import_module("...")`` with a literal name) is checked, relative ones resolved.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOMS = ("envelope", "keybroker", "enclave_workers", "transforms", "pipelines")

# room -> module prefixes it must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "envelope": ("keybroker", "enclave_workers", "transforms", "pipelines", "apache_beam"),
    "keybroker": ("transforms", "pipelines", "apache_beam"),
    "enclave_workers": ("transforms", "pipelines", "apache_beam", "keybroker.service",
                        "keybroker.kms", "keybroker.ledger", "keybroker.policy",
                        "keybroker.config"),
    "transforms": ("pipelines",),
    "pipelines": (),
}


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(current: str, is_package: bool, level: int, module: str | None) -> str:
    package = current.split(".") if is_package else current.split(".")[:-1]
    base = package[: len(package) - (level - 1)] if level > 1 else package
    return ".".join([*base, *([module] if module else [])])


def imported_modules(root: Path, path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    current = _module_name(root, path)
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "") if node.level == 0 else _resolve(
                current, is_package, node.level, node.module)
            yield node.lineno, module
            for alias in node.names:                       # from pkg import submodule
                yield node.lineno, f"{module}.{alias.name}"
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def find_violations(root: Path) -> list[str]:
    problems: list[str] = []
    for room in ROOMS:
        room_dir = root / room
        if not room_dir.is_dir():
            continue
        for path in sorted(room_dir.rglob("*.py")):
            reported: set[tuple[int, str]] = set()
            for line, module in imported_modules(root, path):
                for prefix in FORBIDDEN[room]:
                    if _matches(module, prefix) and (line, prefix) not in reported:
                        reported.add((line, prefix))
                        where = path.relative_to(root).as_posix()
                        problems.append(f"{where}:{line} imports {module} ({room} must not "
                                        f"import {prefix})")
    return problems


def test_the_repository_follows_the_import_direction(repo_root: Path) -> None:
    assert find_violations(repo_root) == []


def test_every_room_that_exists_is_checked(repo_root: Path) -> None:
    present = [room for room in ROOMS if (repo_root / room).is_dir()]
    assert {"envelope", "enclave_workers", "transforms", "pipelines"} <= set(present)


def test_the_checker_finds_each_kind_of_violation(tmp_path: Path) -> None:
    files = {
        "envelope/__init__.py": "import apache_beam as beam\n",
        "keybroker/__init__.py": "",
        "keybroker/service/__init__.py": "",
        "keybroker/client.py": "from ..transforms import read\n",
        "enclave_workers/__init__.py": "",
        "enclave_workers/ok.py": ("from keybroker.client import BrokerClient\n"
                                  "from keybroker.attestation.snp import layout\n"),
        "enclave_workers/bad.py": ("def later():\n"
                                   "    from keybroker import service\n"
                                   "    import importlib\n"
                                   "    importlib.import_module('pipelines.cli')\n"),
        "transforms/__init__.py": "from . import x\n",
        "transforms/x.py": "from pipelines.batch import run_batch\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = find_violations(tmp_path)
    assert [p.split(" imports ")[0] for p in found] == [
        "envelope/__init__.py:1",
        "keybroker/client.py:1",
        "enclave_workers/bad.py:2",
        "enclave_workers/bad.py:4",
        "transforms/x.py:1",
    ]
    assert "keybroker.service" in found[2]
