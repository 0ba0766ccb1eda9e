"""Fixtures shared by every test room: repository paths and the shared attestation vectors."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_VECTORS = REPO_ROOT.parent / "shared" / "vectors"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_vectors() -> Path:
    """The real attestation evidence in ../shared/vectors; skips where it is absent."""
    if not SHARED_VECTORS.is_dir():
        pytest.skip(f"real attestation vectors not present at {SHARED_VECTORS}")
    return SHARED_VECTORS
