"""SEV-SNP verification against real reports and AMD's real certificate chains."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from keybroker.attestation import (
    AttestationError,
    EndorsementUnavailableError,
    EvidenceFormatError,
    EvidenceVerificationError,
    ReportDataMismatchError,
    Verifier,
)
from keybroker.attestation.snp import PRODUCTION_ARK_PINS, SnpTrustStore, SnpVerifier, parse_report
from keybroker.attestation.snp.certificates import load_pem_certificates, spki_sha256
from tests.attestation.helpers import fixed_clock


@pytest.fixture(scope="module")
def production_trust(amd_roots_dir: Path) -> SnpTrustStore:
    return SnpTrustStore(amd_roots_dir)


@pytest.fixture(scope="module")
def verifier(production_trust: SnpTrustStore) -> SnpVerifier:
    return SnpVerifier(production_trust, clock=fixed_clock())


def _vector(snp_vectors: Path, name: str) -> tuple[bytes, bytes]:
    folder = snp_vectors / name
    return (folder / "report.bin").read_bytes(), (folder / "vcek.der").read_bytes()


def test_pins_are_the_real_amd_arks(amd_roots_dir: Path) -> None:
    for product in ("milan", "genoa"):
        _, ark = load_pem_certificates((amd_roots_dir / f"ask_ark_{product}.pem").read_bytes(), "t")
        assert PRODUCTION_ARK_PINS[spki_sha256(ark)] == product.capitalize()
    _, ark = load_pem_certificates((amd_roots_dir / "ask_ark_turin_vcek.pem").read_bytes(), "t")
    assert PRODUCTION_ARK_PINS[spki_sha256(ark)] == "Turin"


def test_snp_verifier_is_a_verifier(verifier: SnpVerifier) -> None:
    assert isinstance(verifier, Verifier)
    assert verifier.tee == "sev-snp"


def test_trustee_milan_report_verifies(verifier: SnpVerifier, snp_vectors: Path) -> None:
    report, vcek = _vector(snp_vectors, "milan-trustee")
    expected = parse_report(report).report_data
    claims = verifier.evaluate(report, expected, endorsements={"vcek": vcek})
    assert claims.tee == "sev-snp"
    assert claims.product == "Milan"
    assert claims.signing_key == "vcek"
    assert claims.simulated is False
    assert claims.debug is False
    assert claims.report_version == 2
    assert claims.tcb == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    assert claims.platform["vmpl"] == 0
    assert claims.platform["smt"] is True
    assert claims.platform["migration_agent"] is False
    assert claims.platform["chip_id"] == parse_report(report).chip_id.hex()
    assert claims.raw["policy"] == 0x3001F
    assert claims.measurement == parse_report(report).measurement.hex()


def test_trustee_report_verifies_with_chain_only_from_endorsements(
        snp_vectors: Path, amd_roots_dir: Path) -> None:
    """No trust dir: the offered ASK/ARK are accepted because the ARK matches a pin."""
    ask, ark = load_pem_certificates((amd_roots_dir / "ask_ark_milan.pem").read_bytes(), "t")
    from cryptography.hazmat.primitives.serialization import Encoding

    report, vcek = _vector(snp_vectors, "milan-trustee")
    claims = SnpVerifier(SnpTrustStore(), clock=fixed_clock()).evaluate(
        report, parse_report(report).report_data,
        endorsements={"vcek": vcek, "ask": ask.public_bytes(Encoding.DER),
                      "ark": ark.public_bytes(Encoding.DER)})
    assert claims.simulated is False and claims.product == "Milan"


def test_missing_ask_without_trust_dir_is_a_clear_error(snp_vectors: Path) -> None:
    report, vcek = _vector(snp_vectors, "milan-trustee")
    with pytest.raises(EvidenceVerificationError, match="no ASK named"):
        SnpVerifier(SnpTrustStore(), clock=fixed_clock()).evaluate(
            report, parse_report(report).report_data, endorsements={"vcek": vcek})


def test_goguest_report_verifies_and_says_debug(verifier: SnpVerifier, snp_vectors: Path) -> None:
    report, vcek = _vector(snp_vectors, "milan-goguest")
    parsed = parse_report(report)
    assert parsed.report_data[:5] == bytes([1, 2, 3, 4, 5])
    claims = verifier.evaluate(report, parsed.report_data, endorsements={"vcek": vcek})
    assert claims.debug is True  # policy 0xb0000: a production policy must reject it
    assert claims.raw["policy_flags"]["debug_allowed"] is True
    assert claims.tcb == {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}


@pytest.mark.parametrize("bad_vcek", ["vcek-invalid-legacy.der", "vcek-invalid-new.der"])
def test_malformed_vceks_are_rejected(verifier: SnpVerifier, snp_vectors: Path,
                                      bad_vcek: str) -> None:
    report, _ = _vector(snp_vectors, "milan-trustee")
    vcek = (snp_vectors / "milan-trustee" / bad_vcek).read_bytes()
    expected = parse_report(report).report_data
    with pytest.raises(EvidenceVerificationError, match="vcek certificate signature does not"):
        verifier.evaluate(report, expected, endorsements={"vcek": vcek})


def test_vcek_of_another_chip_is_rejected(verifier: SnpVerifier, snp_vectors: Path) -> None:
    report, _ = _vector(snp_vectors, "milan-trustee")
    _, other_vcek = _vector(snp_vectors, "milan-goguest")
    with pytest.raises(EvidenceVerificationError):
        verifier.evaluate(report, parse_report(report).report_data,
                          endorsements={"vcek": other_vcek})


def test_wrong_report_data_is_a_mismatch(verifier: SnpVerifier, snp_vectors: Path) -> None:
    report, vcek = _vector(snp_vectors, "milan-trustee")
    wrong = bytearray(parse_report(report).report_data)
    wrong[-1] ^= 1
    with pytest.raises(ReportDataMismatchError):
        verifier.evaluate(report, bytes(wrong), endorsements={"vcek": vcek})
    with pytest.raises(ReportDataMismatchError):
        verifier.evaluate(report, b"short", endorsements={"vcek": vcek})


@pytest.mark.parametrize("at", [datetime(2022, 1, 1, tzinfo=timezone.utc),
                                datetime(2031, 1, 1, tzinfo=timezone.utc)])
def test_vcek_outside_its_validity_is_rejected(production_trust: SnpTrustStore,
                                               snp_vectors: Path, at: datetime) -> None:
    report, vcek = _vector(snp_vectors, "milan-trustee")
    with pytest.raises(EvidenceVerificationError, match=r"vcek certificate (is not valid|expired)"):
        SnpVerifier(production_trust, clock=fixed_clock(at)).evaluate(
            report, parse_report(report).report_data, endorsements={"vcek": vcek})


def test_every_signed_byte_is_covered(verifier: SnpVerifier, snp_vectors: Path) -> None:
    """One flipped bit anywhere in [0, 0x2A0) or in R/S makes the report fail."""
    report, vcek = _vector(snp_vectors, "milan-trustee")
    expected = parse_report(report).report_data
    positions = [*range(0, 0x2A0), *range(0x2A0, 0x2A0 + 144, 7)]
    for position in positions:
        tampered = bytearray(report)
        tampered[position] ^= 1 << (position % 8)
        with pytest.raises(AttestationError):
            verifier.evaluate(bytes(tampered), expected, endorsements={"vcek": vcek})


def test_truncated_evidence_is_a_format_error(verifier: SnpVerifier, snp_vectors: Path) -> None:
    report, vcek = _vector(snp_vectors, "milan-trustee")
    for length in (0, 1, 0x2A0, len(report) - 1):
        with pytest.raises(EvidenceFormatError):
            verifier.evaluate(report[:length], bytes(64), endorsements={"vcek": vcek})


def test_missing_vcek_without_kds_is_endorsement_unavailable(verifier: SnpVerifier,
                                                             snp_vectors: Path) -> None:
    report, _ = _vector(snp_vectors, "milan-trustee")
    with pytest.raises(EndorsementUnavailableError, match="no vcek certificate"):
        verifier.evaluate(report, parse_report(report).report_data, endorsements={})


def test_unknown_endorsement_names_are_rejected(verifier: SnpVerifier, snp_vectors: Path) -> None:
    report, vcek = _vector(snp_vectors, "milan-trustee")
    with pytest.raises(EvidenceFormatError, match="unknown SEV-SNP endorsements"):
        verifier.evaluate(report, parse_report(report).report_data,
                          endorsements={"vcek": vcek, "pck": b"x"})


def test_garbage_vcek_is_a_format_error(verifier: SnpVerifier, snp_vectors: Path) -> None:
    report, _ = _vector(snp_vectors, "milan-trustee")
    for blob in (b"", b"\x30\x03abc", b"\x00" * 20000):
        with pytest.raises(EvidenceFormatError, match="vcek certificate"):
            verifier.evaluate(report, parse_report(report).report_data, endorsements={"vcek": blob})


def test_claims_of_real_report_are_json(verifier: SnpVerifier, snp_vectors: Path) -> None:
    import json

    report, vcek = _vector(snp_vectors, "milan-trustee")
    expected = parse_report(report).report_data
    claims = verifier.evaluate(report, expected, endorsements={"vcek": vcek})
    document = json.loads(json.dumps(claims.to_json()))
    assert document["report_data"] == parse_report(report).report_data.hex()
    assert document["raw"]["reported_tcb"]["microcode"] == 115
