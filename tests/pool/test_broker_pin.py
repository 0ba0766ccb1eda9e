"""A pool worker pins the broker's identity key, as in-process workers do: without a key to
pin it does not start, and a broker whose grants another key signed gives it nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from enclave_workers.batch_processor import default_feature_spec
from enclave_workers.pool import cli
from enclave_workers.pool.broker_pin import BrokerPinError, broker_identity_path
from enclave_workers.pool.worker import PoolSettings, build_pool_worker
from keybroker.client import BrokerReplyNotAuthenticError
from keybroker.identity import IDENTITY_PUBLIC_KEY_FILE, BrokerIdentity
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pool.conftest import broker_public_key


def _settings(broker: BrokerEnv, dev_tee_dir: Path, identity: Path | None) -> PoolSettings:
    return PoolSettings(broker.url, "simulated-sev-snp", str(dev_tee_dir),
                        default_feature_spec(), "sealed-arrow",
                        broker_identity=str(identity) if identity else None)


def test_the_default_pin_is_the_key_beside_the_dev_chain(broker: BrokerEnv) -> None:
    assert broker_identity_path(None, str(broker.dev_tee_dir)) == broker_public_key(broker)
    worker = build_pool_worker(_settings(broker, broker.dev_tee_dir, None))
    try:
        worker.start()                       # every grant verified with the pinned key
    finally:
        worker.close()


def test_without_a_key_to_pin_the_worker_is_not_built(broker: BrokerEnv,
                                                      tmp_path: Path) -> None:
    lone_chain = tmp_path / "dev-tee"        # the dev chain without the state beside it
    shutil.copytree(broker.dev_tee_dir, lone_chain)
    assert not (tmp_path / IDENTITY_PUBLIC_KEY_FILE).exists()
    with pytest.raises(BrokerPinError, match="no broker identity to pin"):
        build_pool_worker(_settings(broker, lone_chain, None))


def test_grants_signed_by_another_key_give_the_worker_nothing(broker: BrokerEnv,
                                                              tmp_path: Path) -> None:
    BrokerIdentity.create(tmp_path / "other-identity.pem")
    other = tmp_path / "other-identity.pub.pem"
    worker = build_pool_worker(_settings(broker, broker.dev_tee_dir, other))
    try:
        with pytest.raises(BrokerReplyNotAuthenticError):
            worker.start()
    finally:
        worker.close()


def test_worker_serve_with_a_wrong_pin_exits_with_one_line(broker: BrokerEnv, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    BrokerIdentity.create(tmp_path / "other-identity.pem")
    status = cli.main(["--broker_url", broker.url, "--dev_tee_dir", str(broker.dev_tee_dir),
                       "--broker_identity", str(tmp_path / "other-identity.pub.pem"),
                       "--port", "0"])
    captured = capsys.readouterr()
    assert status == cli.USAGE_EXIT and captured.out == ""
    assert captured.err.startswith("sealbeam worker: error: ")
    assert len(captured.err.strip().splitlines()) == 1


def test_an_unreadable_pin_is_refused(broker: BrokerEnv, tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-key.pem"
    bogus.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "ascii")
    with pytest.raises(BrokerPinError, match="broker identity"):
        build_pool_worker(_settings(broker, broker.dev_tee_dir, bogus))
