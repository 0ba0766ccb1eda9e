"""The ``sealbeam keys`` command group on its own, and a fresh initialized state per test,
shared by the keys CLI tests (so they do not depend on the other command modules importing)."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from pipelines.commands import keys as keys_commands


def keys_main(argv: Sequence[str]) -> int:
    """``sealbeam`` with only the ``keys`` group registered, exactly as pipelines/cli.py does."""
    parser = argparse.ArgumentParser(prog="sealbeam")
    keys_commands.register(parser.add_subparsers(dest="command", metavar="COMMAND",
                                                 required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


@pytest.fixture(scope="module")
def initialized_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `keys init` per test module (RSA key generation makes it the slow part)."""
    state = tmp_path_factory.mktemp("keys-cli") / "state"
    assert keys_main(["keys", "init", "--state", str(state)]) == 0
    return state


@pytest.fixture
def state(initialized_state: Path, tmp_path: Path) -> Path:
    """A private copy of the initialized state for one test."""
    copy = tmp_path / "state"
    shutil.copytree(initialized_state, copy)
    return copy
