"""Fixtures and helpers the attestation test rooms share, defined once.

What it does: builds session fixtures for a folder of the shared vectors (skipping where it
is absent) and for a generated dev SEV-SNP chain of one product; copies a generated chain's
ARK/ASK into a trust directory and pins its ARK as if AMD had issued it (`pin_amd_chain`);
runs a test HTTP server in a background thread for the life of a ``with`` block
(`BackgroundServer`). A conftest binds a fixture to its name by assignment::

    snp_vectors = vector_dir_fixture("sev-snp", "SEV-SNP vectors")
    milan_chain = dev_snp_chain_fixture("Milan", include_vlek=True)

What it does not: decide what a test room needs (each conftest still lists its fixtures), or
copy the shared vectors anywhere (fixtures return paths into them).
"""

from __future__ import annotations

import shutil
import socketserver
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pytest
from cryptography import x509

from keybroker.attestation.dev_chain import create_dev_chain
from keybroker.attestation.snp.certificates import spki_sha256

__all__ = [
    "BackgroundServer",
    "PinnedChain",
    "dev_snp_chain_fixture",
    "pin_amd_chain",
    "vector_dir_fixture",
]

_SERVER_STOP_SECONDS = 5


def vector_dir_fixture(folder: str, what: str) -> Any:
    """A session fixture: ``shared_vectors / folder``, skipping the test where it is absent."""

    @pytest.fixture(scope="session")
    def vector_dir(shared_vectors: Path) -> Path:
        path = shared_vectors / folder
        if not path.is_dir():
            pytest.skip(f"no {what} in {path}")
        return path

    vector_dir.__doc__ = f"The {what} in the shared vectors ({folder}/), read in place."
    return vector_dir


def dev_snp_chain_fixture(product: str, *, include_vlek: bool = False, scope: str = "session",
                          doc: str | None = None) -> Any:
    """A fixture: a fresh dev ARK/ASK(/ASVK)/VCEK(/VLEK) chain for ``product`` in a temp dir."""

    @pytest.fixture(scope=scope)  # type: ignore[call-overload]
    def dev_snp_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
        directory = tmp_path_factory.mktemp(f"dev-{product.lower()}")
        create_dev_chain(directory, product=product, include_vlek=include_vlek)
        return directory

    dev_snp_chain.__doc__ = doc or f"A generated dev {product} chain (VLEK: {include_vlek})."
    return dev_snp_chain


@dataclass(frozen=True)
class PinnedChain:
    """A generated ARK/ASK/VCEK chain, a trust dir holding its ASK/ARK, and the ARK's pin."""

    chain_dir: Path
    trust_dir: Path
    pins: dict[str, str]


def pin_amd_chain(chain_dir: Path, trust_dir: Path, product: str) -> PinnedChain:
    """Copy the chain's ARK/ASK into ``trust_dir`` and pin the ARK's key as ``product``'s."""
    for name in ("ark.pem", "ask.pem"):
        shutil.copy(chain_dir / name, trust_dir / name)
    ark = x509.load_pem_x509_certificate((chain_dir / "ark.pem").read_bytes())
    return PinnedChain(chain_dir, trust_dir, {spki_sha256(ark): product})


class BackgroundServer:
    """Serves a ``socketserver`` server in a daemon thread while the ``with`` block runs."""

    _server: socketserver.BaseServer
    _thread: threading.Thread

    def _serve_in_background(self, server: socketserver.BaseServer) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=_SERVER_STOP_SECONDS)
