"""Intel TDX end to end over HTTP: quotes built under a test root configured as the Intel root.

The broker's settings name a directory whose ``intel_sgx_root_ca.pem`` is the generated root,
pin it (``extra_intel_root_pins``) and give signed collateral (``tdx_collateral``), so the
verifier computes a TCB status that the policy judges. The broker's clock sits inside the
collateral's validity (tests/attestation_tdx/builder.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from enclave_workers.evidence.base import Evidence
from keybroker.attestation.tdx.trust import INTEL_ROOT_FILENAME, certificate_fingerprint
from keybroker.service.server import RunningBroker
from tests.attestation_e2e.support import (
    attest_once,
    expect_denied,
    open_released_key,
    release_rule,
    serve_broker,
)
from tests.attestation_tdx.builder import (
    CLOCK,
    QuoteSpec,
    TestPki,
    build_collateral,
    build_qe_identity,
    build_quote,
    build_tcb_info,
    make_pki,
    tcb_level,
)

MRTD = "11" * 48  # QuoteSpec's default MR_TD


@dataclass
class BuiltTdxProvider:
    """A TD's evidence provider: quotes signed under the test PKI, with our report_data."""

    pki: TestPki
    spec: QuoteSpec = field(default_factory=QuoteSpec)
    endorsements: Mapping[str, bytes] = field(default_factory=dict)
    tee: str = "tdx"
    simulated: bool = False

    def collect(self, report_data: bytes) -> Evidence:
        quote = build_quote(self.pki, replace(self.spec, report_data=report_data)).data
        return Evidence(tee=self.tee, evidence=quote, endorsements=dict(self.endorsements))


def broker_clock() -> Callable[[], float]:
    """Moves with real time from inside the collateral's validity window."""
    start = time.monotonic()
    return lambda: CLOCK.timestamp() + (time.monotonic() - start)


@pytest.fixture(scope="module")
def pki() -> TestPki:
    return make_pki()


def _intel_dir(directory: Path, pki: TestPki) -> Path:
    (directory / INTEL_ROOT_FILENAME).write_bytes(pki.root.public_bytes(Encoding.PEM))
    return directory


RULE = release_rule("tdx-workers", ["tdx"], [MRTD], tcb_status=["UpToDate", "SWHardeningNeeded"],
                    rtmrs={"rtmr0": ["50" * 48]}, mrconfigid=["22" * 48], mrowner=["33" * 48])


@pytest.fixture(scope="module")
def clock() -> Callable[[], float]:
    return broker_clock()


@pytest.fixture(scope="module")
def tdx_broker(tmp_path_factory: pytest.TempPathFactory, pki: TestPki,
               clock: Callable[[], float]) -> Iterator[RunningBroker]:
    base = tmp_path_factory.mktemp("tdx")
    collateral = base / "collateral.json"
    collateral.write_bytes(build_collateral(pki, build_tcb_info([tcb_level("UpToDate")]),
                                            build_qe_identity()))
    attestation = {"intel_root_dir": _intel_dir(base, pki),
                   "extra_intel_root_pins": (certificate_fingerprint(pki.root),),
                   "tdx_collateral": collateral}
    with serve_broker(base / "state", [RULE], attestation=attestation, clock=clock) as broker:
        yield broker


@pytest.fixture(scope="module")
def no_collateral_broker(tmp_path_factory: pytest.TempPathFactory, pki: TestPki,
                         clock: Callable[[], float]) -> Iterator[RunningBroker]:
    base = tmp_path_factory.mktemp("tdx-bare")
    attestation = {"intel_root_dir": _intel_dir(base, pki),
                   "extra_intel_root_pins": (certificate_fingerprint(pki.root),)}
    rules = [RULE, release_rule("tdx-unknown-tcb-ok", ["tdx"], ["99" * 48],
                                allow_unknown_tcb=True)]
    with serve_broker(base / "state", rules, attestation=attestation, clock=clock) as broker:
        yield broker


def test_td_gets_and_opens_a_key_with_tcb_status(tdx_broker: RunningBroker, pki: TestPki,
                                                 clock: Callable[[], float]) -> None:
    attested = open_released_key(tdx_broker, BuiltTdxProvider(pki), clock=clock)
    assert attested.details["claims"]["tee"] == "tdx" and attested.details["simulated"] is False
    assert attested.details["rule"] == "tdx-workers"
    session = attest_once(tdx_broker, BuiltTdxProvider(pki))
    assert session.claims["tcb_status"] == "UpToDate"
    assert session.claims["measurement"] == MRTD and session.claims["debug"] is False


def test_tdx_denials_are_recorded(tdx_broker: RunningBroker, pki: TestPki) -> None:
    out_of_date = build_collateral(pki, build_tcb_info([tcb_level("OutOfDate")],
                                                       evaluation_number=18),
                                   build_qe_identity())
    expect_denied(tdx_broker, BuiltTdxProvider(pki, endorsements={"collateral": out_of_date}),
                  403, "tcb_status 'OutOfDate' not allowed by rule tdx-workers")
    debug = QuoteSpec(td_attributes=bytes.fromhex("0100001000000000"))
    expect_denied(tdx_broker, BuiltTdxProvider(pki, debug), 403,
                  "debug enabled, not allowed by rule tdx-workers")
    expect_denied(tdx_broker, BuiltTdxProvider(pki, QuoteSpec(mr_td=b"\x12" * 48)), 403,
                  "measurement not allowed by rule tdx-workers")
    other_rtmr = QuoteSpec(rtmrs=(b"\x60" * 48, b"\x51" * 48, b"\x52" * 48, b"\x53" * 48))
    expect_denied(tdx_broker, BuiltTdxProvider(pki, other_rtmr), 403,
                  "rtmr0 not allowed by rule tdx-workers")
    expect_denied(tdx_broker, BuiltTdxProvider(make_pki()), 401, "not a trusted root")


def test_without_collateral_the_status_is_unknown_and_denied(
        no_collateral_broker: RunningBroker, pki: TestPki) -> None:
    entry = expect_denied(no_collateral_broker, BuiltTdxProvider(pki), 403,
                          "tcb_status unknown (no TDX collateral), not allowed by rule "
                          "tdx-workers")
    assert entry.details["claims"]["measurement"] == MRTD
    lenient = BuiltTdxProvider(pki, QuoteSpec(mr_td=b"\x99" * 48))
    session = attest_once(no_collateral_broker, lenient)
    assert session.claims["tcb_status"] is None


def test_unconfigured_and_unknown_tees_are_bad_requests(no_collateral_broker: RunningBroker,
                                                        pki: TestPki) -> None:
    expect_denied(no_collateral_broker, BuiltTdxProvider(pki, tee="maa"), 400,
                  "no verifier for 'maa'")
    expect_denied(no_collateral_broker, BuiltTdxProvider(pki, tee="sgx"), 400,
                  "no verifier for 'sgx'")
