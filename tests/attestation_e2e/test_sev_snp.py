"""SEV-SNP end to end over HTTP: the dev chain (simulated) and a chain under non-dev test roots.

The second broker trusts a generated ARK/ASK as if it were AMD's: its trust directory holds
the ASK/ARK PEMs and the settings pin the ARK's key (``extra_amd_ark_pins``), with the dev
root not loaded at all — so evidence under it is not simulated, and debug, measurement,
HOST_DATA and product checks decide.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT, SimulatedSnpProvider
from keybroker.attestation.dev_chain import create_dev_chain
from keybroker.service.server import RunningBroker
from tests.attestation_e2e.support import (
    attest_once,
    expect_denied,
    open_released_key,
    release_rule,
    serve_broker,
)
from tests.support.attestation import dev_snp_chain_fixture, pin_amd_chain

OTHER_MEASUREMENT = "ab" * 48


@pytest.fixture(scope="module")
def simulated_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    rules = [release_rule("simulated-snp", ["sev-snp"], [DEV_MEASUREMENT],
                          allow_simulated=True)]
    with serve_broker(tmp_path_factory.mktemp("snp-sim") / "state", rules,
                      allow_simulated=True) as broker:
        yield broker


test_root_chain = dev_snp_chain_fixture(
    "Genoa", scope="module",
    doc="A Genoa chain that the second broker pins as if AMD had issued it.")


@pytest.fixture(scope="module")
def pinned_broker(tmp_path_factory: pytest.TempPathFactory,
                  test_root_chain: Path) -> Iterator[RunningBroker]:
    pinned = pin_amd_chain(test_root_chain, tmp_path_factory.mktemp("amd-trust"), "Genoa")
    rules = [release_rule("genoa-workers", ["sev-snp"], [DEV_MEASUREMENT],
                          host_data=["00" * 32], max_vmpl=0, exclude_products=["Milan"],
                          min_tcb={"Genoa": {"bootloader": 0, "snp": 0}})]
    with serve_broker(tmp_path_factory.mktemp("snp-pinned") / "state", rules,
                      settings_changes={"snp_trust_dir": pinned.trust_dir},
                      attestation={"extra_amd_ark_pins": pinned.pins}) as broker:
        yield broker


def test_simulated_worker_gets_and_opens_a_key(simulated_broker: RunningBroker) -> None:
    provider = SimulatedSnpProvider(simulated_broker.settings.dev_chain_dir)
    attested = open_released_key(simulated_broker, provider)
    assert attested.details["claims"]["tee"] == "sev-snp"
    assert attested.details["simulated"] is True
    assert attested.details["rule"] == "simulated-snp"


def test_simulated_denials_are_recorded(simulated_broker: RunningBroker) -> None:
    chain = simulated_broker.settings.dev_chain_dir
    expect_denied(simulated_broker, SimulatedSnpProvider(chain, debug=True), 403,
                  "debug enabled, not allowed by rule simulated-snp")
    expect_denied(simulated_broker, SimulatedSnpProvider(chain, measurement=OTHER_MEASUREMENT),
                  403, "measurement not allowed by rule simulated-snp")


def test_chain_under_pinned_test_roots_is_not_simulated(pinned_broker: RunningBroker,
                                                        test_root_chain: Path) -> None:
    provider = SimulatedSnpProvider(test_root_chain, version=3)
    attested = open_released_key(pinned_broker, provider)
    assert attested.details["simulated"] is False
    assert attested.details["claims"]["product"] == "Genoa"
    session = attest_once(pinned_broker, provider)
    assert session.simulated is False and session.claims["tcb_status"] is None


def test_pinned_broker_denials(pinned_broker: RunningBroker, test_root_chain: Path,
                               tmp_path: Path) -> None:
    expect_denied(pinned_broker, SimulatedSnpProvider(test_root_chain, debug=True), 403,
                  "debug enabled, not allowed by rule genoa-workers")
    expect_denied(pinned_broker, SimulatedSnpProvider(test_root_chain, host_data=b"\x01" * 32),
                  403, "host_data not allowed by rule genoa-workers")
    expect_denied(pinned_broker, SimulatedSnpProvider(test_root_chain, vmpl=2), 403,
                  "vmpl 2 above max_vmpl 0 of rule genoa-workers")
    create_dev_chain(tmp_path / "milan", product="Milan")  # a dev root: not trusted here
    expect_denied(pinned_broker, SimulatedSnpProvider(tmp_path / "milan"), 401,
                  "not a pinned AMD root")
