"""The simulated TDX attester through the broker: real quotes under a dev root, fail closed.

A broker whose policy allows simulated evidence loads the dev TDX root named in
``attestation.tdx_dev_root`` and releases keys to the simulated TD (marked simulated); one
whose policy does not never loads it, so it has no TDX verifier at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from enclave_workers.evidence.simulated_tdx import (
    DEV_MRTD,
    DEV_TDX_ROOT_FILE,
    SimulatedTdxProvider,
    create_dev_tdx_chain,
)
from keybroker.service.server import RunningBroker
from tests.attestation_e2e.support import (
    attest_once,
    expect_denied,
    open_released_key,
    release_rule,
    serve_broker,
)
from tests.support.tee_brokers import dev_tdx_fixture, simulated_tdx_broker_fixture

dev_tdx = dev_tdx_fixture()
simulated_broker = simulated_tdx_broker_fixture("simulated-tdx", "tdx-sim")


def test_dev_chain_refuses_to_overwrite(dev_tdx: Path) -> None:
    with pytest.raises(FileExistsError):
        create_dev_tdx_chain(dev_tdx)
    assert (dev_tdx / "pck-key.pem").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("version", [4, 5])
def test_simulated_td_gets_and_opens_a_key(simulated_broker: RunningBroker, dev_tdx: Path,
                                           version: int) -> None:
    attested = open_released_key(simulated_broker, SimulatedTdxProvider(dev_tdx,
                                                                        version=version))
    assert attested.details["simulated"] is True
    session = attest_once(simulated_broker, SimulatedTdxProvider(dev_tdx, version=version))
    assert session.claims["tcb_status"] == "UpToDate" and session.claims["measurement"] == DEV_MRTD
    assert session.claims["report_version"] == version


def test_simulated_td_denials(simulated_broker: RunningBroker, dev_tdx: Path) -> None:
    expect_denied(simulated_broker, SimulatedTdxProvider(dev_tdx, debug=True), 403,
                  "debug enabled, not allowed by rule simulated-tdx")
    expect_denied(simulated_broker, SimulatedTdxProvider(dev_tdx, with_collateral=False), 403,
                  "tcb_status unknown (no TDX collateral)")


def test_without_allow_simulated_the_dev_root_is_not_loaded(
        tmp_path: Path, dev_tdx: Path) -> None:
    rules = [release_rule("tdx", ["tdx"], [DEV_MRTD])]
    with serve_broker(tmp_path / "state", rules,
                      attestation={"tdx_dev_root": dev_tdx / DEV_TDX_ROOT_FILE}) as broker:
        expect_denied(broker, SimulatedTdxProvider(dev_tdx), 400, "no verifier for 'tdx'")
