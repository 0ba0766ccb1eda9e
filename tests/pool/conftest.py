"""A real broker, and pool workers as real processes on loopback (simulated SEV-SNP).

``start_pool_worker`` runs ``python -m enclave_workers.pool`` (what ``sealbeam worker
serve`` execs) on a free port, waits for its ready line, and is stopped by pid;
``serving_pool`` serves an in-process ``PoolWorker`` (other TEEs, server limits) on a thread
for the life of a ``with`` block; ``sealed_eu_batch`` seals records under the broker's eu KEK.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from enclave_workers.pool.server import PoolServer
from enclave_workers.pool.worker import PoolWorker
from envelope import DataKey, dek_wrap_aad
from keybroker.identity import IDENTITY_PUBLIC_KEY_FILE
from keybroker.kms.local import LocalKeyring
from keybroker.service.server import RunningBroker
from tests.enclave_workers.broker_env import BrokerEnv, broker_env, person, seal_json

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60


@dataclass
class PoolProcess:
    process: subprocess.Popen[str]
    url: str
    spec_fingerprint: str

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def start_pool_worker(broker: BrokerEnv, *extra: str) -> PoolProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "enclave_workers.pool", "--broker_url", broker.url,
         "--tee", "simulated-sev-snp", "--dev_tee_dir", str(broker.dev_tee_dir),
         "--port", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(timeout=READY_TIMEOUT_S)
        raise RuntimeError(f"pool worker did not start: {process.stderr.read()}")  # type: ignore[union-attr]
    ready = json.loads(line)
    return PoolProcess(process, ready["url"], ready["spec_fingerprint"])


def byte_reader(data: bytes) -> Callable[[int], bytes]:
    """``read(count)`` over ``data``, as the pool's wire readers take from a socket: at most
    ``count`` bytes, fewer at the end."""
    view, position = memoryview(data), 0

    def read(count: int) -> bytes:
        nonlocal position
        chunk = bytes(view[position:position + count])
        position += len(chunk)
        return chunk

    return read


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerEnv]:
    with broker_env(tmp_path_factory.mktemp("broker")) as env:
        yield env


@pytest.fixture(scope="session")
def pool_pair(broker: BrokerEnv) -> Iterator[list[PoolProcess]]:
    """Two pool workers for the session (tests that kill one start their own)."""
    workers = [start_pool_worker(broker), start_pool_worker(broker)]
    try:
        yield workers
    finally:
        for worker in workers:
            worker.kill()


@pytest.fixture(scope="session")
def located_pool_pair(broker: BrokerEnv) -> Iterator[list[PoolProcess]]:
    """Two pool workers attesting the location ``local`` (simulated SEV-SNP HOST_DATA), for
    runs whose residency map requires worker locations."""
    workers = [start_pool_worker(broker, "--worker_location", "local") for _ in range(2)]
    try:
        yield workers
    finally:
        for worker in workers:
            worker.kill()


def broker_public_key(broker: RunningBroker | BrokerEnv) -> Path:
    """The broker's public identity key (what ``sealbeam keys init`` wrote beside its state)."""
    return Path(broker.settings.state_dir) / IDENTITY_PUBLIC_KEY_FILE


@contextmanager
def serving_pool(worker: PoolWorker, **limits: int) -> Iterator[PoolServer]:
    """``worker`` behind a ``PoolServer`` (``limits``: its keyword limits) on a daemon thread;
    shut down and closed when the block ends."""
    server = PoolServer(worker, **limits)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def sealed_eu_batch(broker: RunningBroker, count: int) -> list[bytes]:
    """``count`` eu records of producer acme, sealed under a fresh DEK wrapped by the broker's
    eu KEK."""
    keyring = LocalKeyring.open(broker.settings.keyring_path)
    data_key = DataKey.generate()
    wrapped = keyring.wrap(keyring.kek_for_region("eu"), data_key.secret_bytes(),
                           dek_wrap_aad("eu", "acme"))
    return [seal_json(person(i, "eu"), data_key, wrapped, "eu", "acme") for i in range(count)]


def pool_call(url: str, path: str, body: bytes | None = None) -> dict:
    """GET (no body) or POST ``path`` on a pool worker; its JSON answer."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET" if body is None else "POST", path, body=body)
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def health_counts(url: str) -> dict[str, int]:
    return pool_call(url, "/v1/pool/health")["counts"]
