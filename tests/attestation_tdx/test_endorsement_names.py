"""`TdxVerifier.evaluate` refuses endorsement names it does not read, like the other verifiers:
an endorsement silently ignored would let a caller believe it had been checked."""

from __future__ import annotations

import pytest

from keybroker.attestation.errors import EvidenceFormatError
from keybroker.attestation.tdx.trust import TdxTrustStore
from keybroker.attestation.tdx.verify import ENDORSEMENT_NAMES, TdxVerifier
from tests.attestation_tdx.builder import (
    QuoteSpec,
    TestPki,
    build_collateral,
    build_qe_identity,
    build_quote,
    build_tcb_info,
    clock_at,
    tcb_level,
)

REPORT_DATA = bytes(range(64))


@pytest.fixture(scope="module")
def quote(pki: TestPki) -> bytes:
    return build_quote(pki, QuoteSpec(report_data=REPORT_DATA)).data


@pytest.fixture(scope="module")
def collateral(pki: TestPki) -> bytes:
    return build_collateral(pki, build_tcb_info([tcb_level("UpToDate")]), build_qe_identity())


def test_only_collateral_is_an_endorsement() -> None:
    assert frozenset({"collateral"}) == ENDORSEMENT_NAMES


def test_known_endorsements_still_verify(dev_trust: TdxTrustStore, quote: bytes,
                                         collateral: bytes) -> None:
    verifier = TdxVerifier(dev_trust, clock_at())
    assert verifier.evaluate(quote, REPORT_DATA).platform["tcb_status"] is None
    claims = verifier.evaluate(quote, REPORT_DATA, endorsements={"collateral": collateral})
    assert claims.platform["tcb_status"] == "UpToDate"


@pytest.mark.parametrize("extra", [
    {"vcek": b"\x30\x82"},  # an SEV-SNP endorsement sent with a TDX quote
    {"pck-chain": b"-----BEGIN CERTIFICATE-----"},
    {"Collateral": b"{}"},  # names are case-sensitive
])
def test_unknown_endorsement_names_are_refused(dev_trust: TdxTrustStore, quote: bytes,
                                               collateral: bytes, extra: dict) -> None:
    verifier = TdxVerifier(dev_trust, clock_at())
    (name,) = extra
    for endorsements in (extra, {"collateral": collateral, **extra}):
        with pytest.raises(EvidenceFormatError, match=f"unknown TDX endorsements.*'{name}'"):
            verifier.evaluate(quote, REPORT_DATA, endorsements=endorsements)


def test_an_endorsement_that_is_not_bytes_is_refused(dev_trust: TdxTrustStore,
                                                     quote: bytes) -> None:
    with pytest.raises(EvidenceFormatError, match="endorsement 'collateral' must be bytes"):
        TdxVerifier(dev_trust, clock_at()).evaluate(
            quote, REPORT_DATA, endorsements={"collateral": "{}"})  # type: ignore[dict-item]
