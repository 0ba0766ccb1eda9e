"""A pool worker on (simulated) Intel TDX: real-format quotes under a dev TDX root. The broker
releases it keys; a client that trusts the dev root verifies it and sends a batch; a client
that trusts only the pinned Intel root refuses it and sends nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_workers.batch_processor import default_feature_spec
from enclave_workers.evidence.simulated_tdx import DEV_TDX_ROOT_FILE
from enclave_workers.pool.server import PoolServer
from enclave_workers.pool.worker import PoolSettings, build_pool_worker
from keybroker.service.server import RunningBroker
from tests.pool.conftest import broker_public_key, sealed_eu_batch, serving_pool
from tests.support.tee_brokers import dev_tdx_fixture, simulated_tdx_broker_fixture
from transforms.pool_client import PoolEndpoint
from transforms.pool_trust import PoolAttestationError, PoolTrust

dev_tdx = dev_tdx_fixture()
tdx_broker = simulated_tdx_broker_fixture("simulated-tdx-pool", "tdx-pool")


@pytest.fixture(scope="module")
def tdx_pool(tdx_broker: RunningBroker, dev_tdx: Path) -> Iterator[PoolServer]:
    worker = build_pool_worker(PoolSettings(
        tdx_broker.url, "simulated-tdx", str(dev_tdx), default_feature_spec(), "sealed-arrow",
        broker_identity=str(broker_public_key(tdx_broker))))
    worker.start()
    with serving_pool(worker) as server:
        yield server


def _endpoint(server: PoolServer, broker: RunningBroker, dev_root: Path | None
              ) -> PoolEndpoint:
    trust = PoolTrust.from_file(str(broker.settings.policy_path),
                                dev_tdx_root=str(dev_root) if dev_root else None)
    return PoolEndpoint(server.url, trust.verifier(),
                        spec_fingerprint=server.worker.spec_fingerprint,
                        output_format="sealed-arrow", timeout_s=10)


def test_a_simulated_tdx_pool_is_verified_then_processes(
        tdx_pool: PoolServer, tdx_broker: RunningBroker, dev_tdx: Path) -> None:
    endpoint = _endpoint(tdx_pool, tdx_broker, dev_tdx / DEV_TDX_ROOT_FILE)
    verified = endpoint.attest()
    assert (verified.tee, verified.rule, verified.simulated) == ("tdx", "simulated-tdx-pool",
                                                                 True)
    assert endpoint.process(sealed_eu_batch(tdx_broker, 8), batch_id=b"\x01" * 16).outputs


def test_without_the_dev_root_a_tdx_pool_is_refused(tdx_pool: PoolServer,
                                                   tdx_broker: RunningBroker) -> None:
    before = dict(tdx_pool.counts)
    with pytest.raises(PoolAttestationError, match="no verifier for the pool's TEE 'tdx'"):
        _endpoint(tdx_pool, tdx_broker, None).process(sealed_eu_batch(tdx_broker, 3),
                                                      batch_id=b"\x01" * 16)
    assert tdx_pool.counts["batches"] == before["batches"]
