"""Quotes built with a generated Intel-like PKI: v4/v5, chains, validity, CRLs, tampering."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import pytest

from keybroker.attestation.errors import (
    EvidenceFormatError,
    EvidenceVerificationError,
    ReportDataMismatchError,
    TrustStoreError,
)
from keybroker.attestation.tdx.trust import TdxTrustStore
from keybroker.attestation.tdx.verify import TdxVerifier
from tests.attestation_tdx.builder import (
    CLOCK,
    QuoteSpec,
    TestPki,
    build_collateral,
    build_qe_identity,
    build_quote,
    build_tcb_info,
    clock_at,
    make_pki,
    tcb_level,
)

REPORT_DATA = bytes(range(64))


def _evaluate(trust, evidence, *, collateral=None, at=CLOCK, report_data=REPORT_DATA):
    endorsements = {"collateral": collateral} if collateral is not None else {}
    return TdxVerifier(trust, clock_at(at)).evaluate(
        evidence, report_data, endorsements=endorsements
    )


def _collateral(pki: TestPki, **kwargs) -> bytes:
    return build_collateral(
        pki, build_tcb_info([tcb_level("UpToDate")]), build_qe_identity(), **kwargs
    )


@pytest.mark.parametrize(
    ("version", "body_type"), [(4, 2), (5, 2), (5, 3)], ids=["v4", "v5-td10", "v5-td15"]
)
def test_built_quotes_verify(dev_trust, pki, version: int, body_type: int) -> None:
    spec = QuoteSpec(version=version, body_type=body_type, mr_td=b"\xab" * 48)
    claims = _evaluate(dev_trust, build_quote(pki, spec).data, collateral=_collateral(pki))
    assert claims.report_version == version
    assert claims.measurement == "ab" * 48
    assert claims.report_data == REPORT_DATA
    assert claims.debug is False
    assert claims.simulated is True  # the test root is a dev root in this store
    assert claims.platform["tcb_status"] == "UpToDate"
    assert claims.platform["td_report_version"] == ("1.5" if body_type == 3 else "1.0")
    assert claims.tcb["pce_svn"] == 11 and claims.tcb["qe_svn"] == 4


def test_pinned_test_root_is_not_simulated(pinned_trust, pki) -> None:
    claims = _evaluate(pinned_trust, build_quote(pki).data)
    assert claims.simulated is False
    assert claims.platform["tcb_status"] is None
    assert claims.platform["advisory_ids"] == ()


def test_debug_attribute_is_reported(dev_trust, pki) -> None:
    spec = QuoteSpec(td_attributes=bytes.fromhex("0100001000000000"))
    assert _evaluate(dev_trust, build_quote(pki, spec).data).debug is True


def test_report_data_mismatch(dev_trust, pki) -> None:
    evidence = build_quote(pki).data
    with pytest.raises(ReportDataMismatchError):
        _evaluate(dev_trust, evidence, report_data=bytes(64))
    with pytest.raises(ReportDataMismatchError, match="64 bytes"):
        _evaluate(dev_trust, evidence, report_data=REPORT_DATA[:32])


def test_trailing_padding_is_tolerated_and_reported(dev_trust, pki) -> None:
    claims = _evaluate(dev_trust, build_quote(pki, QuoteSpec(trailing=bytes(70))).data)
    assert claims.raw["trailing_length"] == 70


@pytest.mark.parametrize(
    "region",
    [
        "header",
        "body",
        "quote_signature",
        "attestation_key",
        "qe_report",
        "qe_report_signature",
        "qe_auth_data",
    ],
)
@pytest.mark.parametrize("bit", [0, 7])
def test_flipped_bit_in_every_signed_region_is_rejected(
    dev_trust, pki, region: str, bit: int
) -> None:
    built = build_quote(pki)
    start, end = built.regions[region]
    for offset in {start, (start + end) // 2, end - 1}:
        tampered = bytearray(built.data)
        tampered[offset] ^= 1 << bit
        with pytest.raises((EvidenceVerificationError, EvidenceFormatError)):
            _evaluate(dev_trust, bytes(tampered))


def test_flipped_report_data_is_not_a_mismatch_but_a_bad_signature(dev_trust, pki) -> None:
    """Authenticity is checked before report_data, so a forged binding is a bad signature."""
    built = build_quote(pki)
    tampered = bytearray(built.data)
    tampered[built.regions["body"][1] - 1] ^= 0x01
    with pytest.raises(EvidenceVerificationError, match="quote signature"):
        _evaluate(dev_trust, bytes(tampered))


def test_wrong_chain_is_rejected(dev_trust) -> None:
    other = make_pki(root_name="Test SGX Root CA")  # same name, different key
    with pytest.raises(EvidenceVerificationError):
        _evaluate(dev_trust, build_quote(other).data)


def test_chain_to_unknown_root_name_is_rejected(dev_trust) -> None:
    other = make_pki(root_name="Some Other Root")
    with pytest.raises(EvidenceVerificationError):
        _evaluate(dev_trust, build_quote(other).data)


def test_qe_report_signed_by_another_pck_is_rejected(dev_trust, pki) -> None:
    """A valid PCK certificate, but the QE report was signed by a different key."""
    # a freshly issued, valid PCK certificate in the chain; the QE report signed by the old key
    mismatched = replace(pki.with_pck(), pck_key=pki.pck_key)
    evidence = build_quote(mismatched).data
    with pytest.raises(EvidenceVerificationError, match="QE report signature"):
        _evaluate(dev_trust, evidence)


@pytest.mark.parametrize(
    ("not_before", "not_after"),
    [
        (datetime(2019, 1, 1, tzinfo=timezone.utc), datetime(2024, 12, 31, tzinfo=timezone.utc)),
        (datetime(2025, 2, 1, tzinfo=timezone.utc), datetime(2030, 1, 1, tzinfo=timezone.utc)),
    ],
    ids=["expired", "not-yet-valid"],
)
def test_pck_outside_validity_is_rejected(dev_trust, pki, not_before, not_after) -> None:
    expired = pki.with_pck(not_before=not_before, not_after=not_after)
    with pytest.raises(EvidenceVerificationError, match="not valid at"):
        _evaluate(dev_trust, build_quote(expired).data)


def test_revoked_pck_is_rejected(dev_trust, pki) -> None:
    collateral = _collateral(pki, revoked_pck_serials=(pki.pck.serial_number,))
    with pytest.raises(EvidenceVerificationError, match="revoked"):
        _evaluate(dev_trust, build_quote(pki).data, collateral=collateral)


def test_revoked_platform_ca_is_rejected(dev_trust, pki) -> None:
    collateral = _collateral(pki, revoked_ca_serials=(pki.platform_ca.serial_number,))
    with pytest.raises(EvidenceVerificationError, match="revoked"):
        _evaluate(dev_trust, build_quote(pki).data, collateral=collateral)


def test_other_pck_revoked_does_not_reject(dev_trust, pki) -> None:
    collateral = _collateral(pki, revoked_pck_serials=(pki.pck.serial_number + 1,))
    claims = _evaluate(dev_trust, build_quote(pki).data, collateral=collateral)
    assert claims.platform["tcb_status"] == "UpToDate"


def test_stale_crl_is_rejected(dev_trust, pki) -> None:
    collateral = _collateral(pki, crl_next_update=datetime(2025, 1, 10, tzinfo=timezone.utc))
    with pytest.raises(EvidenceVerificationError, match="CRL"):
        _evaluate(dev_trust, build_quote(pki).data, collateral=collateral)


def test_collateral_from_another_root_is_rejected(dev_trust, pki) -> None:
    other = make_pki()
    collateral = _collateral(other)
    with pytest.raises(EvidenceVerificationError):
        _evaluate(dev_trust, build_quote(pki).data, collateral=collateral)


def test_collateral_signed_by_wrong_key_is_rejected(dev_trust, pki) -> None:
    collateral = _collateral(pki, signing_key=pki.pck_key)
    with pytest.raises(EvidenceVerificationError, match="signature is invalid"):
        _evaluate(dev_trust, build_quote(pki).data, collateral=collateral)


def test_expired_collateral_is_rejected(dev_trust, pki) -> None:
    later = datetime(2025, 3, 1, tzinfo=timezone.utc)
    with pytest.raises(EvidenceVerificationError, match="not current"):
        _evaluate(dev_trust, build_quote(pki).data, collateral=_collateral(pki), at=later)


def test_non_intel_qe_is_rejected_without_collateral(dev_trust, pki) -> None:
    spec = QuoteSpec(qe_mr_signer=b"\x01" * 32)
    with pytest.raises(EvidenceVerificationError, match="not Intel's TD QE"):
        _evaluate(dev_trust, build_quote(pki, spec).data)


def test_qe_identity_mismatch_is_rejected_with_collateral(dev_trust, pki) -> None:
    spec = QuoteSpec(qe_isv_prod_id=3)
    with pytest.raises(EvidenceVerificationError, match="ISVPRODID"):
        _evaluate(dev_trust, build_quote(pki, spec).data, collateral=_collateral(pki))


def test_debug_qe_is_rejected(dev_trust, pki) -> None:
    spec = QuoteSpec(qe_attributes=bytes.fromhex("13000000000000000000000000000000"))
    with pytest.raises(EvidenceVerificationError, match="debug"):
        _evaluate(dev_trust, build_quote(pki, spec).data)


def test_foreign_qe_vendor_is_rejected(dev_trust, pki) -> None:
    spec = QuoteSpec(qe_vendor_id=b"\x42" * 16)
    with pytest.raises(EvidenceVerificationError, match="vendor"):
        _evaluate(dev_trust, build_quote(pki, spec).data)


def test_broker_collateral_and_newer_endorsed_collateral(dev_trust, pki) -> None:
    """The broker's collateral is used; evidence-supplied collateral wins only if newer."""
    older = build_collateral(
        pki, build_tcb_info([tcb_level("OutOfDate")], evaluation_number=16), build_qe_identity()
    )
    newer = build_collateral(
        pki, build_tcb_info([tcb_level("UpToDate")], evaluation_number=17), build_qe_identity()
    )
    evidence = build_quote(pki).data
    broker_old = TdxVerifier(dev_trust, clock_at(), collateral=older)
    assert (
        broker_old.evaluate(evidence, REPORT_DATA, endorsements={}).platform["tcb_status"]
        == "OutOfDate"
    )
    upgraded = broker_old.evaluate(evidence, REPORT_DATA, endorsements={"collateral": newer})
    assert upgraded.platform["tcb_status"] == "UpToDate"
    broker_new = TdxVerifier(dev_trust, clock_at(), collateral=newer)
    kept = broker_new.evaluate(evidence, REPORT_DATA, endorsements={"collateral": older})
    assert kept.platform["tcb_status"] == "UpToDate"


def test_collateral_source_is_asked_by_fmspc(dev_trust, pki) -> None:
    from keybroker.attestation.tdx.collateral import parse_collateral

    asked: list[bytes] = []
    parsed = parse_collateral(_collateral(pki))

    def source(fmspc: bytes):
        asked.append(fmspc)
        return parsed

    claims = TdxVerifier(dev_trust, clock_at(), collateral=source).evaluate(
        build_quote(pki).data, REPORT_DATA, endorsements={}
    )
    assert asked == [pki.platform_tcb.fmspc]
    assert claims.platform["tcb_status"] == "UpToDate"


def test_naive_clock_is_refused(dev_trust, pki) -> None:
    verifier = TdxVerifier(dev_trust, lambda: datetime(2025, 1, 15))
    with pytest.raises(TrustStoreError, match="timezone-aware"):
        verifier.evaluate(build_quote(pki).data, REPORT_DATA, endorsements={})


def test_trust_store_needs_a_root() -> None:
    with pytest.raises(TrustStoreError):
        TdxTrustStore()


def test_trust_directory_without_root(tmp_path) -> None:
    with pytest.raises(TrustStoreError, match="cannot read"):
        TdxTrustStore.from_directory(tmp_path)
