"""Object-store emulators on loopback for tests: ``gcp-storage-emulator`` and Azurite.

``start_gcs_emulator()`` runs ``gcp-storage-emulator`` (pip) in memory on a free port and
yields its ``host:port`` (for ``STORAGE_EMULATOR_HOST``); ``start_azurite(workdir)`` runs the
blob service of Azurite (npm, installed into ``.test-servers/`` by
``scripts/install-test-servers.sh``) and yields its connection string. Both wait until the
server answers and stop it by its pid when the block ends. The ``gcs_emulator`` and
``azurite`` fixtures (session scope) wrap them; Azurite is skipped, naming the install
script, when it is not installed.

What it does not: no location metadata — neither emulator reports where a bucket or account
is (see ``tests/support/metadata_servers.py`` for that).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = [
    "AZURITE_ACCOUNT",
    "AZURITE_KEY",
    "AzuriteServer",
    "azurite",
    "azurite_bin",
    "free_port",
    "gcs_emulator",
    "start_azurite",
    "start_gcs_emulator",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
# Azurite's documented development account (public, the same in every Azurite install).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")
_START_TIMEOUT_S = 30.0


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (the OS picks it: bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer on port {port} within {_START_TIMEOUT_S}s")


def _stop(process: subprocess.Popen) -> None:
    """Stop the server's process group by pid (it may have children)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextmanager
def start_gcs_emulator() -> Iterator[str]:
    """``gcp-storage-emulator`` in memory on 127.0.0.1; yields ``127.0.0.1:<port>``."""
    port = free_port()
    command = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
               "--port", str(port), "--in-memory", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        _wait_for_port(port, process, "gcp-storage-emulator")
        yield f"127.0.0.1:{port}"
    finally:
        _stop(process)


def azurite_bin() -> Path | None:
    """``.test-servers/node_modules/.bin/azurite-blob`` when installed, else None."""
    path = REPO_ROOT / ".test-servers" / "node_modules" / ".bin" / "azurite-blob"
    return path if path.is_file() and shutil.which("node") else None


class AzuriteServer:
    """A running Azurite blob service: its endpoint and the development account."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.account = AZURITE_ACCOUNT
        self.key = AZURITE_KEY
        self.blob_endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={self.account};"
                f"AccountKey={self.key};BlobEndpoint={self.blob_endpoint};")


@contextmanager
def start_azurite(workdir: Path) -> Iterator[AzuriteServer]:
    """Azurite's blob service on 127.0.0.1, its workspace (blobs, metadata) in ``workdir``."""
    binary = azurite_bin()
    if binary is None:
        raise RuntimeError("Azurite is not installed: run scripts/install-test-servers.sh")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    command = [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port),
               "--location", str(workdir), "--silent",
               "--skipApiVersionCheck", "--loose", "--disableTelemetry"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True, cwd=workdir)
    try:
        _wait_for_port(port, process, "azurite")
        yield AzuriteServer(port)
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """``host:port`` of a session-wide ``gcp-storage-emulator``."""
    with start_gcs_emulator() as host:
        yield host


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """A session-wide Azurite blob service (skips when scripts/install-test-servers.sh has
    not installed it)."""
    if azurite_bin() is None:
        pytest.skip("Azurite is not installed (run scripts/install-test-servers.sh; "
                    "`make test` does)")
    with start_azurite(tmp_path_factory.mktemp("azurite")) as server:
        yield server
