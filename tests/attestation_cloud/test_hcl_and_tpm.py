"""HCL report and vTPM quote parsing: real Azure vectors, built reports, malformed input."""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keybroker.attestation.azure_cvm.evidence import (
    AzureCvmEvidence,
    evidence_from_az_cvm_vtpm,
    parse_azure_cvm_evidence,
)
from keybroker.attestation.azure_cvm.hcl import (
    REQUEST_DATA_OFFSET,
    encode_hcl_report,
    parse_hcl_report,
)
from keybroker.attestation.azure_cvm.tdreport import parse_td_report
from keybroker.attestation.azure_cvm.tpm import (
    TPM_ALG_RSAPSS,
    check_pcr_digest,
    parse_quote_attest,
    parse_signature,
    verify_quote_signature,
)
from keybroker.attestation.errors import (
    AttestationError,
    EvidenceFormatError,
    EvidenceVerificationError,
)
from keybroker.attestation.snp import SnpTrustStore, SnpVerifier
from keybroker.attestation.snp.report import parse_report
from keybroker.attestation.tdx.quote import parse_quote
from tests.attestation_cloud.support import (
    SnpAzureBuilder,
    bincode_quote,
    new_rsa_key,
    pcr_values,
    quote_for,
    runtime_data,
)


# --- the real vectors -----------------------------------------------------------------
def test_real_snp_hcl_report_parses_and_binds_runtime_data(azure_vectors: Path) -> None:
    hcl = parse_hcl_report((azure_vectors / "snp" / "hcl-report.bin").read_bytes())
    assert (hcl.hardware, hcl.header_version, hcl.report_size) == ("sev-snp", 1, 2346)
    assert hcl.runtime_data.user_data == bytes(64)
    assert hcl.runtime_data.key_ids == ("HCLAkPub", "HCLEkPub")
    assert hcl.runtime_data.vm_configuration["vmUniqueId"] == "911B0EF8-9DBA-48B0-B275-4E4DF2D39252"
    report = parse_report(hcl.hardware_report)
    assert report.report_data[:32] == hashlib.sha256(hcl.runtime_data_bytes).digest()
    assert report.vmpl == 0 and not report.debug


def test_real_snp_report_inside_verifies_with_the_vcek_chain(azure_vectors: Path) -> None:
    from keybroker.attestation.azure_cvm.verify import snp_endorsements_from_pem_chain

    hcl = parse_hcl_report((azure_vectors / "snp" / "hcl-report.bin").read_bytes())
    report = parse_report(hcl.hardware_report)
    endorsements = snp_endorsements_from_pem_chain(
        (azure_vectors / "snp" / "vcek-chain.pem").read_bytes(), "vcek")
    assert set(endorsements) == {"vcek", "ask", "ark"}
    verifier = SnpVerifier(SnpTrustStore(),
                           clock=lambda: datetime(2025, 6, 1, tzinfo=timezone.utc))
    claims = verifier.evaluate(hcl.hardware_report, report.report_data,
                               endorsements=endorsements)
    assert claims.product == "Milan" and not claims.simulated and not claims.debug
    # outside the VCEK's validity the same report fails
    expired = SnpVerifier(SnpTrustStore(),
                          clock=lambda: datetime(2060, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(EvidenceVerificationError):
        expired.evaluate(hcl.hardware_report, report.report_data, endorsements=endorsements)


def test_real_tpm_quote_verifies_with_the_ak_from_runtime_data(azure_vectors: Path) -> None:
    hcl_bytes = (azure_vectors / "snp" / "hcl-report.bin").read_bytes()
    evidence = evidence_from_az_cvm_vtpm(hcl_bytes,
                                         (azure_vectors / "snp" / "tpm-quote.bin").read_bytes())
    quote = parse_quote_attest(evidence.tpm_attest)
    signature = parse_signature(evidence.tpm_signature)
    assert quote.extra_data == b"challenge"
    assert quote.selected_pcrs() == tuple(range(24))
    key = parse_hcl_report(hcl_bytes).runtime_data.ak_public_key
    verify_quote_signature(quote, signature, key)
    assert check_pcr_digest(quote, evidence.pcrs) == dict(evidence.pcrs)
    # trustee's own negative case: byte 0x30 of the bincode quote lies in the signature
    broken = bytearray((azure_vectors / "snp" / "tpm-quote.bin").read_bytes())
    broken[0x30] ^= 0xFF
    tampered = evidence_from_az_cvm_vtpm(hcl_bytes, bytes(broken))
    with pytest.raises(EvidenceVerificationError, match="does not verify"):
        verify_quote_signature(quote, parse_signature(tampered.tpm_signature), key)
    changed = dict(evidence.pcrs)
    changed[5] = bytes(32)
    with pytest.raises(EvidenceVerificationError, match="pcrDigest"):
        check_pcr_digest(quote, changed)


def test_real_tdx_hcl_report_matches_its_td_quote(azure_vectors: Path) -> None:
    hcl = parse_hcl_report((azure_vectors / "tdx" / "hcl-report.bin").read_bytes())
    assert hcl.hardware == "tdx" and hcl.header_version == 2
    td_report = parse_td_report(hcl.hardware_report)
    body = parse_quote((azure_vectors / "tdx" / "td-quote.bin").read_bytes()).body
    assert body.report_data[:32] == hashlib.sha256(hcl.runtime_data_bytes).digest()
    assert (td_report.report_data, td_report.mr_td, td_report.rtmrs) == \
        (body.report_data, body.mr_td, body.rtmrs)


# --- built reports: structure ----------------------------------------------------------
def test_built_report_round_trips(builder: SnpAzureBuilder) -> None:
    user_data = bytes(range(64))
    hcl = parse_hcl_report(builder.hcl_report(user_data))
    assert hcl.runtime_data.user_data == user_data
    assert hcl.runtime_data_digest() == parse_report(hcl.hardware_report).report_data[:32]


@pytest.mark.parametrize(("offset", "value", "message"), [
    (0, b"HCLB", "signature is not 'HCLA'"),
    (4, struct.pack("<I", 9), "header version 9"),
    (16, struct.pack("<I", 1), "status is 0x1"),
    (24, b"\x01", "header reserved bytes"),
    (REQUEST_DATA_OFFSET + 4, struct.pack("<I", 2), "request data version 2"),
    (REQUEST_DATA_OFFSET + 8, struct.pack("<I", 3), "report type 3"),
    (REQUEST_DATA_OFFSET + 12, struct.pack("<I", 7), "hash type 7"),
    (REQUEST_DATA_OFFSET, struct.pack("<I", 10), "request data size 10"),
    (8, struct.pack("<I", 99), "report size 99"),
    (2599, b"\x01", "padding after the report"),
])
def test_malformed_header_fields_are_named(builder: SnpAzureBuilder, offset: int,
                                           value: bytes, message: str) -> None:
    data = bytearray(builder.hcl_report(bytes(64)))
    data[offset:offset + len(value)] = value
    with pytest.raises(EvidenceFormatError, match=message):
        parse_hcl_report(bytes(data))


def test_runtime_data_problems_are_named(ak_key: rsa.RSAPrivateKey) -> None:
    snp = bytes(1184)

    def parse(runtime: bytes) -> None:
        parse_hcl_report(encode_hcl_report(snp, runtime))

    with pytest.raises(EvidenceFormatError, match="not valid JSON"):
        parse(b"{not json")
    with pytest.raises(EvidenceFormatError, match="no HCLAkPub"):
        parse(json.dumps({"keys": [{"kid": "other", "kty": "RSA"}]}).encode())
    with pytest.raises(EvidenceFormatError, match="duplicate JSON key"):
        parse(b'{"keys": [], "keys": []}')
    with pytest.raises(EvidenceFormatError, match="user-data must be 128 hex"):
        parse(runtime_data(ak_key.public_key(), None, **{"user-data": "00"}))
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    with pytest.raises(EvidenceFormatError, match="1024 bits"):
        parse(runtime_data(small.public_key(), bytes(64)))


def test_truncations_raise_typed_errors(builder: SnpAzureBuilder) -> None:
    data = builder.hcl_report(bytes(64))
    report_size = parse_hcl_report(data).report_size
    for length in (0, 3, 31, 32, 1215, 1216, 1235, report_size - 1):
        with pytest.raises(EvidenceFormatError):
            parse_hcl_report(data[:length])
    with pytest.raises(EvidenceFormatError, match="over the"):
        parse_hcl_report(data + bytes(16 * 1024))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(min_value=0, max_value=2599), value=st.integers(0, 255),
       cut=st.integers(min_value=0, max_value=2600))
def test_parser_never_fails_untyped(builder: SnpAzureBuilder, position: int, value: int,
                                    cut: int) -> None:
    data = bytearray(builder.hcl_report(bytes(64)))
    data[position] = value
    with contextlib.suppress(AttestationError):
        parse_hcl_report(bytes(data[:cut]))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_tpm_parsers_never_fail_untyped(blob: bytes) -> None:
    for parser in (parse_quote_attest, parse_signature, parse_azure_cvm_evidence):
        with contextlib.suppress(AttestationError):
            parser(blob)


# --- built quotes ------------------------------------------------------------------------
def test_built_quote_verifies_with_rsassa_and_rsapss(ak_key: rsa.RSAPrivateKey) -> None:
    pcrs = pcr_values()
    for scheme in (0x0014, TPM_ALG_RSAPSS):
        attest, signature = quote_for(ak_key, bytes(64), pcrs, scheme=scheme)
        quote = parse_quote_attest(attest)
        verify_quote_signature(quote, parse_signature(signature), ak_key.public_key())
        check_pcr_digest(quote, pcrs)
        with pytest.raises(EvidenceVerificationError):
            verify_quote_signature(quote, parse_signature(signature),
                                   new_rsa_key().public_key())


def test_quote_structure_errors_are_named(ak_key: rsa.RSAPrivateKey) -> None:
    attest, signature = quote_for(ak_key, bytes(64), pcr_values())
    with pytest.raises(EvidenceFormatError, match="magic"):
        parse_quote_attest(b"\x00" + attest[1:])
    with pytest.raises(EvidenceFormatError, match="TPM_ST_ATTEST_QUOTE"):
        parse_quote_attest(attest[:4] + b"\x80\x17" + attest[6:])
    with pytest.raises(EvidenceFormatError, match="after the last field"):
        parse_quote_attest(attest + b"\x00")
    with pytest.raises(EvidenceFormatError, match="remain"):
        parse_quote_attest(attest[:-1])
    with pytest.raises(EvidenceFormatError, match="sigAlg 0x0018"):
        parse_signature(b"\x00\x18" + signature[2:])
    with pytest.raises(EvidenceFormatError, match="not SHA-256"):
        parse_signature(signature[:2] + b"\x00\x04" + signature[4:])
    quote = parse_quote_attest(attest)
    with pytest.raises(EvidenceVerificationError, match="missing"):
        check_pcr_digest(quote, {0: bytes(32)})


def test_evidence_document_round_trips_and_rejects_junk(ak_key: rsa.RSAPrivateKey) -> None:
    attest, signature = quote_for(ak_key, bytes(64), pcr_values())
    evidence = AzureCvmEvidence(hcl_report=b"h", tpm_attest=attest, tpm_signature=signature,
                                pcrs=pcr_values())
    assert parse_azure_cvm_evidence(evidence.to_bytes()) == evidence
    document = json.loads(evidence.to_bytes())
    for change, message in [({"format": "v0"}, "format"), ({"extra": 1}, "unknown fields"),
                            ({"hcl_report": "!!"}, "not valid base64"),
                            ({"pcrs": {"24": "00" * 32}}, "PCR index"),
                            ({"pcrs": {"1": "00"}}, "64 hex")]:
        with pytest.raises(EvidenceFormatError, match=message):
            parse_azure_cvm_evidence(json.dumps({**document, **change}).encode())
    with pytest.raises(EvidenceFormatError, match="over the"):
        parse_azure_cvm_evidence(b" " * (200 * 1024))


def test_bincode_quote_import_reads_both_pcr_encodings(ak_key: rsa.RSAPrivateKey) -> None:
    pcrs = pcr_values()
    attest, signature = quote_for(ak_key, bytes(64), pcrs)
    raw_signature = parse_signature(signature).signature
    values = [pcrs[index] for index in range(24)]
    old = bincode_quote(raw_signature, attest, values)
    new = (old[:8 + len(raw_signature) + 8 + len(attest) + 8]
           + b"".join(struct.pack("<Q", 32) + value for value in values))
    for blob in (old, new):
        evidence = evidence_from_az_cvm_vtpm(b"hcl", blob)
        assert evidence.pcrs == pcrs and evidence.tpm_attest == attest
    with pytest.raises(EvidenceFormatError, match="do not hold"):
        evidence_from_az_cvm_vtpm(b"hcl", old[:-1])
