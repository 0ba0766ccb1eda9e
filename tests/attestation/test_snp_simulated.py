"""Simulated SEV-SNP evidence: dev chain, every version/product/key kind, and rejections."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509

from enclave_workers.evidence import (
    DEV_MEASUREMENT,
    Evidence,
    EvidenceProvider,
    EvidenceUnavailableError,
    SimulatedSnpProvider,
)
from keybroker.attestation import (
    EndorsementUnavailableError,
    EvidenceFormatError,
    EvidenceVerificationError,
    ReportDataMismatchError,
    TrustStoreError,
)
from keybroker.attestation.dev_chain import create_dev_chain
from keybroker.attestation.snp import SnpTrustStore, SnpVerifier, layout, parse_report
from keybroker.attestation.snp.certificates import common_name, spki_sha256
from keybroker.attestation.snp.tcb import encode_tcb
from tests.attestation.helpers import sign_report

REPORT_DATA = bytes(range(64))


def _verifier(chain: Path) -> SnpVerifier:
    return SnpVerifier(SnpTrustStore(allow_simulated=True, dev_chain_dir=chain))


def test_dev_chain_files_and_names(milan_chain: Path) -> None:
    for name in ("ark.pem", "ask.pem", "vcek.pem", "vcek-key.pem", "asvk.pem", "vlek.pem",
                 "vlek-key.pem"):
        assert (milan_chain / name).is_file()
    assert stat.S_IMODE((milan_chain / "vcek-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((milan_chain / "vlek-key.pem").stat().st_mode) == 0o600
    ark = x509.load_pem_x509_certificate((milan_chain / "ark.pem").read_bytes())
    vcek = x509.load_pem_x509_certificate((milan_chain / "vcek.pem").read_bytes())
    assert "DEV-SIMULATED" in common_name(ark.subject)
    assert common_name(ark.subject).startswith("ARK-Milan")
    assert ark.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSASSA_PSS
    assert ark.public_key().key_size == 4096
    assert vcek.extensions.get_extension_for_oid(
        x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4")).value.value  # hwID present


def test_dev_chain_refuses_to_overwrite(milan_chain: Path) -> None:
    with pytest.raises(FileExistsError):
        create_dev_chain(milan_chain)


def test_provider_follows_the_protocol(milan_chain: Path) -> None:
    provider = SimulatedSnpProvider(milan_chain)
    assert isinstance(provider, EvidenceProvider)
    assert provider.simulated is True and provider.tee == "sev-snp"
    evidence = provider.collect(REPORT_DATA)
    assert isinstance(evidence, Evidence)
    assert set(evidence.endorsements) == {"vcek", "ask", "ark"}
    assert len(evidence.evidence) == layout.REPORT_SIZE
    assert "bytes>" in repr(evidence)
    with pytest.raises(ValueError):
        provider.collect(b"short")


def test_simulated_report_is_real_format(milan_chain: Path) -> None:
    provider = SimulatedSnpProvider(milan_chain, version=3)
    report = parse_report(provider.collect(REPORT_DATA).evidence)
    vcek = x509.load_pem_x509_certificate((milan_chain / "vcek.pem").read_bytes())
    hwid = vcek.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4"))
    assert report.chip_id == hwid.value.value
    assert report.report_data == REPORT_DATA
    assert report.measurement.hex() == DEV_MEASUREMENT
    assert report.debug is False
    assert (report.cpuid_fam_id, report.cpuid_mod_id) == (0x19, 0x01)
    assert report.reported_tcb == encode_tcb(
        {"bootloader": 4, "tee": 0, "snp": 22, "microcode": 213}, "Milan")


@pytest.mark.parametrize("version", [2, 3, 4, 5])
@pytest.mark.parametrize("signing_key", ["vcek", "vlek"])
@pytest.mark.parametrize("extended", [False, True])
def test_milan_versions_and_key_kinds_verify(milan_chain: Path, version: int, signing_key: str,
                                             extended: bool) -> None:
    provider = SimulatedSnpProvider(milan_chain, version=version, signing_key=signing_key,
                                    extended=extended)
    evidence = provider.collect(REPORT_DATA)
    claims = _verifier(milan_chain).evaluate(evidence.evidence, REPORT_DATA,
                                             endorsements=evidence.endorsements)
    assert claims.simulated is True
    assert claims.signing_key == signing_key
    assert claims.report_version == version
    assert claims.product == "Milan"
    assert claims.measurement == DEV_MEASUREMENT
    assert claims.report_data == REPORT_DATA
    if version >= 5:
        assert claims.raw["launch_mit_vector"] == 0


@pytest.mark.parametrize("version", [2, 3, 5])
def test_genoa_verifies(genoa_chain: Path, version: int) -> None:
    evidence = SimulatedSnpProvider(genoa_chain, version=version).collect(REPORT_DATA)
    claims = _verifier(genoa_chain).evaluate(evidence.evidence, REPORT_DATA,
                                             endorsements=evidence.endorsements)
    assert claims.product == "Genoa"
    assert claims.tcb == {"bootloader": 9, "tee": 0, "snp": 23, "microcode": 72}


@pytest.mark.parametrize("version", [2, 3, 5])
@pytest.mark.parametrize("signing_key", ["vcek", "vlek"])
def test_turin_uses_its_tcb_layout_and_8_byte_hwid(turin_chain: Path, version: int,
                                                   signing_key: str) -> None:
    provider = SimulatedSnpProvider(turin_chain, version=version, signing_key=signing_key)
    evidence = provider.collect(REPORT_DATA)
    claims = _verifier(turin_chain).evaluate(evidence.evidence, REPORT_DATA,
                                             endorsements=evidence.endorsements)
    assert claims.product == "Turin"
    assert claims.tcb == {"fmc": 1, "bootloader": 1, "tee": 1, "snp": 3, "microcode": 73}
    report = parse_report(evidence.evidence)
    assert report.reported_tcb & 0xFF == 1 and (report.reported_tcb >> 24) & 0xFF == 3
    if signing_key == "vcek":
        assert any(report.chip_id[:8]) and not any(report.chip_id[8:])


def test_simulated_is_rejected_without_allow_simulated(milan_chain: Path) -> None:
    evidence = SimulatedSnpProvider(milan_chain).collect(REPORT_DATA)
    with pytest.raises(EvidenceVerificationError, match="not a pinned AMD root"):
        SnpVerifier(SnpTrustStore()).evaluate(evidence.evidence, REPORT_DATA,
                                              endorsements=evidence.endorsements)


def test_chain_from_another_dev_root_is_rejected(milan_chain: Path,
                                                 other_milan_chain: Path) -> None:
    evidence = SimulatedSnpProvider(other_milan_chain).collect(REPORT_DATA)
    verifier = _verifier(milan_chain)
    with pytest.raises(EvidenceVerificationError):
        verifier.evaluate(evidence.evidence, REPORT_DATA, endorsements=evidence.endorsements)
    with pytest.raises(EvidenceVerificationError):  # without its own ASK/ARK either
        verifier.evaluate(evidence.evidence, REPORT_DATA,
                          endorsements={"vcek": evidence.endorsements["vcek"]})


def test_mixed_chain_is_rejected(milan_chain: Path, other_milan_chain: Path) -> None:
    """A VCEK from one dev chain with the ASK/ARK of the trusted one does not verify."""
    foreign = SimulatedSnpProvider(other_milan_chain).collect(REPORT_DATA)
    trusted = SimulatedSnpProvider(milan_chain).endorsements()
    with pytest.raises(EvidenceVerificationError, match="does not verify"):
        _verifier(milan_chain).evaluate(
            foreign.evidence, REPORT_DATA,
            endorsements={"vcek": foreign.endorsements["vcek"], "ask": trusted["ask"],
                          "ark": trusted["ark"]})


def test_debug_is_reported_not_judged(milan_chain: Path) -> None:
    evidence = SimulatedSnpProvider(milan_chain, debug=True).collect(REPORT_DATA)
    claims = _verifier(milan_chain).evaluate(evidence.evidence, REPORT_DATA,
                                             endorsements=evidence.endorsements)
    assert claims.debug is True


def test_wrong_report_data_is_a_mismatch(milan_chain: Path) -> None:
    evidence = SimulatedSnpProvider(milan_chain).collect(REPORT_DATA)
    with pytest.raises(ReportDataMismatchError):
        _verifier(milan_chain).evaluate(evidence.evidence, bytes(64),
                                        endorsements=evidence.endorsements)


def test_signed_region_bit_flips_fail(milan_chain: Path) -> None:
    evidence = SimulatedSnpProvider(milan_chain, version=5).collect(REPORT_DATA)
    verifier = _verifier(milan_chain)
    for position in range(0, layout.SIGNED_SIZE, 3):
        tampered = bytearray(evidence.evidence)
        tampered[position] ^= 0x80 >> (position % 8)
        with pytest.raises((EvidenceFormatError, EvidenceVerificationError,
                            ReportDataMismatchError)):
            verifier.evaluate(bytes(tampered), REPORT_DATA, endorsements=evidence.endorsements)


def test_truncations_fail_with_format_error(milan_chain: Path) -> None:
    evidence = SimulatedSnpProvider(milan_chain).collect(REPORT_DATA)
    verifier = _verifier(milan_chain)
    for length in range(0, layout.REPORT_SIZE, 97):
        with pytest.raises(EvidenceFormatError):
            verifier.evaluate(evidence.evidence[:length], REPORT_DATA,
                              endorsements=evidence.endorsements)


def test_unsigned_and_zero_signatures_are_rejected(milan_chain: Path) -> None:
    provider = SimulatedSnpProvider(milan_chain)
    report = parse_report(provider.collect(REPORT_DATA).evidence)
    endorsements = provider.endorsements()
    verifier = _verifier(milan_chain)
    from keybroker.attestation.snp.report import encode_report

    zero = encode_report(replace(report, signature=bytes(512)))
    with pytest.raises(EvidenceVerificationError, match="zero or out of range"):
        verifier.evaluate(zero, REPORT_DATA, endorsements=endorsements)
    unsigned = sign_report(replace(report, signer_info=7 << 2), milan_chain / "vcek-key.pem")
    with pytest.raises(EvidenceVerificationError, match="not signed"):
        verifier.evaluate(unsigned, REPORT_DATA, endorsements=endorsements)
    other_algo = sign_report(replace(report, signature_algo=2), milan_chain / "vcek-key.pem")
    with pytest.raises(EvidenceVerificationError, match="signature_algo"):
        verifier.evaluate(other_algo, REPORT_DATA, endorsements=endorsements)


def test_tcb_must_match_the_vcek(milan_chain: Path) -> None:
    provider = SimulatedSnpProvider(milan_chain)
    report = parse_report(provider.collect(REPORT_DATA).evidence)
    higher = encode_tcb({"bootloader": 4, "tee": 0, "snp": 23, "microcode": 213}, "Milan")
    forged = sign_report(replace(report, reported_tcb=higher), milan_chain / "vcek-key.pem")
    with pytest.raises(EvidenceVerificationError, match="snp report=23 vcek=22"):
        _verifier(milan_chain).evaluate(forged, REPORT_DATA,
                                        endorsements=provider.endorsements())


def test_chip_id_must_match_the_vcek_hwid(milan_chain: Path) -> None:
    provider = SimulatedSnpProvider(milan_chain)
    report = parse_report(provider.collect(REPORT_DATA).evidence)
    forged = sign_report(replace(report, chip_id=b"\x42" * 64), milan_chain / "vcek-key.pem")
    with pytest.raises(EvidenceVerificationError, match="hwID does not match"):
        _verifier(milan_chain).evaluate(forged, REPORT_DATA,
                                        endorsements=provider.endorsements())
    masked = sign_report(replace(report, chip_id=bytes(64), signer_info=0b10),
                         milan_chain / "vcek-key.pem")
    claims = _verifier(milan_chain).evaluate(masked, REPORT_DATA,
                                             endorsements=provider.endorsements())
    assert claims.raw["mask_chip_key"] is True


def test_cpuid_must_match_the_chain(milan_chain: Path) -> None:
    provider = SimulatedSnpProvider(milan_chain, version=3)
    report = parse_report(provider.collect(REPORT_DATA).evidence)
    genoa_cpuid = sign_report(replace(report, cpuid_mod_id=0x11), milan_chain / "vcek-key.pem")
    with pytest.raises(EvidenceVerificationError, match="CPUID says Genoa"):
        _verifier(milan_chain).evaluate(genoa_cpuid, REPORT_DATA,
                                        endorsements=provider.endorsements())
    unknown = sign_report(replace(report, cpuid_fam_id=0x17), milan_chain / "vcek-key.pem")
    with pytest.raises(EvidenceVerificationError, match="not a known SEV-SNP product"):
        _verifier(milan_chain).evaluate(unknown, REPORT_DATA, endorsements=provider.endorsements())


def test_vlek_report_needs_a_vlek(milan_chain: Path) -> None:
    vlek = SimulatedSnpProvider(milan_chain, signing_key="vlek").collect(REPORT_DATA)
    vcek = SimulatedSnpProvider(milan_chain).endorsements()
    with pytest.raises(EndorsementUnavailableError, match="no vlek certificate"):
        _verifier(milan_chain).evaluate(vlek.evidence, REPORT_DATA, endorsements=vcek)
    with pytest.raises(EvidenceVerificationError, match="must chain through an ASVK"):
        _verifier(milan_chain).evaluate(vlek.evidence, REPORT_DATA,
                                        endorsements={"vlek": vcek["vcek"], "ark": vcek["ark"],
                                                      "asvk": vcek["ask"]})


def test_extended_table_conflicting_with_endorsements_is_rejected(milan_chain: Path,
                                                                  other_milan_chain: Path) -> None:
    evidence = SimulatedSnpProvider(milan_chain, extended=True).collect(REPORT_DATA)
    other = SimulatedSnpProvider(other_milan_chain).endorsements()
    with pytest.raises(EvidenceVerificationError, match="differs from the certificate table"):
        _verifier(milan_chain).evaluate(evidence.evidence, REPORT_DATA,
                                        endorsements={"vcek": other["vcek"]})


def test_trust_store_requires_dev_dir_and_rejects_foreign_roots(
        milan_chain: Path, other_milan_chain: Path, tmp_path: Path) -> None:
    with pytest.raises(TrustStoreError, match="dev_chain_dir"):
        SnpTrustStore(allow_simulated=True)
    with pytest.raises(TrustStoreError, match=r"no ark\.pem"):
        SnpTrustStore(allow_simulated=True, dev_chain_dir=tmp_path)
    (tmp_path / "ark.pem").write_bytes((other_milan_chain / "ark.pem").read_bytes())
    with pytest.raises(TrustStoreError, match="matches no pinned AMD ARK"):
        SnpTrustStore(tmp_path)  # a dev root is never a production trust-dir root
    store = SnpTrustStore(allow_simulated=True, dev_chain_dir=milan_chain)
    ark = x509.load_pem_x509_certificate((milan_chain / "ark.pem").read_bytes())
    root = store.trusted_root(ark)
    assert root is not None and root.simulated and root.product == "Milan"
    assert spki_sha256(ark) not in store.pinned_fingerprints


def test_private_root_can_be_pinned_explicitly(milan_chain: Path, tmp_path: Path) -> None:
    """With the dev ARK pinned as a (test) production root, claims are not simulated."""
    for name in ("ask.pem", "ark.pem"):
        (tmp_path / name).write_bytes((milan_chain / name).read_bytes())
    ark = x509.load_pem_x509_certificate((milan_chain / "ark.pem").read_bytes())
    store = SnpTrustStore(tmp_path, ark_pins={spki_sha256(ark): "Milan"})
    evidence = SimulatedSnpProvider(milan_chain, version=3).collect(REPORT_DATA)
    claims = SnpVerifier(store).evaluate(evidence.evidence, REPORT_DATA,
                                         endorsements={"vcek": evidence.endorsements["vcek"]})
    assert claims.simulated is False


def test_provider_errors_are_clear(tmp_path: Path, milan_chain: Path) -> None:
    with pytest.raises(EvidenceUnavailableError, match="missing"):
        SimulatedSnpProvider(tmp_path)
    with pytest.raises(ValueError, match="not Genoa"):
        SimulatedSnpProvider(milan_chain, product="Genoa")
    with pytest.raises(ValueError):
        SimulatedSnpProvider(milan_chain, version=6)
    with pytest.raises(ValueError):
        SimulatedSnpProvider(milan_chain, measurement="00")
