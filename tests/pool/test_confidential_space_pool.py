"""A pool worker on Google Confidential Space, end to end over loopback: it attests to the
broker with a launcher token, and a Beam-side client verifies the token the worker makes for
its nonce and channel key (Google's JWKS from a local document server, the launcher faked on
a Unix socket, as in tests/attestation_e2e) before sending it a batch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_workers.batch_processor import default_feature_spec
from enclave_workers.pool.server import PoolServer
from enclave_workers.pool.worker import PoolSettings, PoolWorker, build_pool_worker
from keybroker.service.server import RunningBroker
from tests.attestation_cloud.support import DocumentServer, new_rsa_key
from tests.attestation_e2e.cloud import FakeLauncher
from tests.pool.conftest import broker_public_key, sealed_eu_batch, serving_pool
from tests.support.tee_brokers import (
    AUDIENCE,
    google_fixture,
    google_getter,
    space_broker_fixture,
    token_claims,
)
from transforms.pool_client import PoolEndpoint
from transforms.pool_trust import PoolAttestationError, PoolTrust

SIGNING_KEY = new_rsa_key()


google = google_fixture(SIGNING_KEY)
space_broker = space_broker_fixture("space-pool", "space-pool")


@pytest.fixture
def space_pool(space_broker: RunningBroker, tmp_path: Path) -> Iterator[PoolServer]:
    with FakeLauncher(tmp_path / "teeserver.sock", SIGNING_KEY, token_claims()) as launcher:
        worker: PoolWorker = build_pool_worker(PoolSettings(
            space_broker.url, "confidential-space", None, default_feature_spec(),
            "sealed-arrow", audience=AUDIENCE, launcher_socket=str(launcher.socket_path),
            broker_identity=str(broker_public_key(space_broker))))
        worker.start()                                 # the broker accepted the token
        with serving_pool(worker) as server:
            yield server


def _endpoint(server: PoolServer, broker: RunningBroker, google: DocumentServer,
              audience: str) -> PoolEndpoint:
    trust = PoolTrust.from_file(str(broker.settings.policy_path),
                                confidential_space_audience=audience)
    return PoolEndpoint(server.url, trust.verifier(jwks_getter=google_getter(google)),
                        spec_fingerprint=server.worker.spec_fingerprint,
                        output_format="sealed-arrow", timeout_s=10)


def test_a_confidential_space_pool_is_verified_then_processes(
        space_pool: PoolServer, space_broker: RunningBroker, google: DocumentServer) -> None:
    endpoint = _endpoint(space_pool, space_broker, google, AUDIENCE)
    verified = endpoint.attest()
    assert verified.tee == "confidential-space" and verified.rule == "space-pool"
    response = endpoint.process(sealed_eu_batch(space_broker, 12), batch_id=b"\x01" * 16)
    assert sum(o.source_count for o in response.outputs) + sum(
        d.records for d in response.dead_letters) == 12
    assert response.outputs


def test_a_token_for_another_audience_is_refused(
        space_pool: PoolServer, space_broker: RunningBroker, google: DocumentServer) -> None:
    endpoint = _endpoint(space_pool, space_broker, google, "https://someone-else.test")
    with pytest.raises(PoolAttestationError, match="token audience"):
        endpoint.process(sealed_eu_batch(space_broker, 3), batch_id=b"\x01" * 16)
    assert space_pool.counts["batches"] == 0
