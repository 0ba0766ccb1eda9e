"""A pool worker on Google Confidential Space, end to end over loopback: it attests to the
broker with a launcher token, and a Beam-side client verifies the token the worker makes for
its nonce and channel key (Google's JWKS from a local document server, the launcher faked on
a Unix socket, as in tests/attestation_e2e) before sending it a batch."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_workers.batch_processor import default_feature_spec
from enclave_workers.pool.server import PoolServer
from enclave_workers.pool.worker import PoolSettings, PoolWorker, build_pool_worker
from envelope import DataKey, dek_wrap_aad
from keybroker.attestation.confidential_space import CONFIDENTIAL_SPACE_ISSUER
from keybroker.kms.local import LocalKeyring
from keybroker.service.server import RunningBroker
from tests.attestation_cloud.support import DocumentServer, jwks_document, new_rsa_key
from tests.attestation_e2e.cloud import FakeLauncher, issuer_getter
from tests.attestation_e2e.support import release_rule, serve_broker
from tests.attestation_e2e.test_confidential_space import token_claims
from tests.enclave_workers.broker_env import person, seal_json
from tests.pool.conftest import broker_public_key
from transforms.pool_client import PoolEndpoint
from transforms.pool_trust import PoolAttestationError, PoolTrust

AUDIENCE = "https://broker.sealbeam.test"
DIGEST = "5e" * 32
SIGNING_KEY = new_rsa_key()


@pytest.fixture(scope="module")
def google() -> Iterator[DocumentServer]:
    with DocumentServer() as server:
        server.documents["/google/.well-known/openid-configuration"] = json.dumps(
            {"issuer": CONFIDENTIAL_SPACE_ISSUER,
             "jwks_uri": f"{CONFIDENTIAL_SPACE_ISSUER}/jwks"}).encode()
        server.documents["/google/jwks"] = jwks_document({"cs-1": SIGNING_KEY})
        yield server


@pytest.fixture(scope="module")
def space_broker(tmp_path_factory: pytest.TempPathFactory,
                 google: DocumentServer) -> Iterator[RunningBroker]:
    rules = [release_rule("space-pool", ["confidential-space"], [f"sha256:{DIGEST}"],
                          hardware=["sev-snp", "tdx"], dbgstat=["disabled-since-boot"])]
    with serve_broker(tmp_path_factory.mktemp("space-pool") / "state", rules,
                      attestation={"confidential_space_audience": AUDIENCE},
                      jwks_getter=_getter(google)) as broker:
        yield broker


def _getter(google: DocumentServer):
    return issuer_getter(google, {CONFIDENTIAL_SPACE_ISSUER: "/google"})


@pytest.fixture
def space_pool(space_broker: RunningBroker, tmp_path: Path) -> Iterator[PoolServer]:
    with FakeLauncher(tmp_path / "teeserver.sock", SIGNING_KEY, token_claims()) as launcher:
        worker: PoolWorker = build_pool_worker(PoolSettings(
            space_broker.url, "confidential-space", None, default_feature_spec(),
            "sealed-arrow", audience=AUDIENCE, launcher_socket=str(launcher.socket_path),
            broker_identity=str(broker_public_key(space_broker))))
        worker.start()                                 # the broker accepted the token
        server = PoolServer(worker)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server
        finally:
            server.shutdown()
            server.server_close()


def _sealed(broker: RunningBroker, count: int) -> list[bytes]:
    keyring = LocalKeyring.open(broker.settings.keyring_path)
    data_key = DataKey.generate()
    wrapped = keyring.wrap(keyring.kek_for_region("eu"), data_key.secret_bytes(),
                           dek_wrap_aad("eu", "acme"))
    return [seal_json(person(i, "eu"), data_key, wrapped, "eu", "acme") for i in range(count)]


def _endpoint(server: PoolServer, broker: RunningBroker, google: DocumentServer,
              audience: str) -> PoolEndpoint:
    trust = PoolTrust.from_file(str(broker.settings.policy_path),
                                confidential_space_audience=audience)
    return PoolEndpoint(server.url, trust.verifier(jwks_getter=_getter(google)),
                        spec_fingerprint=server.worker.spec_fingerprint,
                        output_format="sealed-arrow", timeout_s=10)


def test_a_confidential_space_pool_is_verified_then_processes(
        space_pool: PoolServer, space_broker: RunningBroker, google: DocumentServer) -> None:
    endpoint = _endpoint(space_pool, space_broker, google, AUDIENCE)
    verified = endpoint.attest()
    assert verified.tee == "confidential-space" and verified.rule == "space-pool"
    response = endpoint.process(_sealed(space_broker, 12), batch_id=b"\x01" * 16)
    assert sum(o.source_count for o in response.outputs) + sum(
        d.records for d in response.dead_letters) == 12
    assert response.outputs


def test_a_token_for_another_audience_is_refused(
        space_pool: PoolServer, space_broker: RunningBroker, google: DocumentServer) -> None:
    endpoint = _endpoint(space_pool, space_broker, google, "https://someone-else.test")
    with pytest.raises(PoolAttestationError, match="token audience"):
        endpoint.process(_sealed(space_broker, 3), batch_id=b"\x01" * 16)
    assert space_pool.counts["batches"] == 0
