"""Collateral parsing and DER reading: malformed input raises typed errors naming the field."""

from __future__ import annotations

import json

import pytest

from keybroker.attestation.errors import EvidenceFormatError
from keybroker.attestation.tdx.collateral import (
    parse_collateral,
    parse_qe_identity,
    parse_tcb_info,
    split_signed_response,
)
from keybroker.attestation.tdx.der import read_single
from keybroker.attestation.tdx.pck import load_pem_chain, parse_pck_extensions
from tests.attestation_tdx.builder import (
    PlatformTcb,
    build_collateral,
    build_qe_identity,
    build_tcb_info,
    sgx_extension,
    tcb_level,
)


def _bundle(pki) -> dict:
    return json.loads(
        build_collateral(pki, build_tcb_info([tcb_level("UpToDate")]), build_qe_identity())
    )


def test_bundle_round_trip(pki) -> None:
    collateral = parse_collateral(json.dumps(_bundle(pki)).encode())
    assert collateral.tcb_info.fmspc == pki.platform_tcb.fmspc
    assert collateral.qe_identity.isv_prod_id == 2
    assert len(collateral.tcb_info_issuer_chain) == 2


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("tcb_info_signature", "zz", "tcb_info_signature"),
        ("tcb_info_signature", "00" * 63, "expected 64 bytes"),
        ("pck_crl", "3000", "pck_crl: not a valid CRL"),
        ("tcb_info_issuer_chain", "not a chain", "tcb_info_issuer_chain"),
        ("qe_identity", "[1, 2]", "enclaveIdentity: expected a JSON object"),
        ("tcb_info", "{", "tcb_info: not valid JSON"),
    ],
)
def test_bundle_field_errors(pki, key: str, value: str, message: str) -> None:
    bundle = _bundle(pki)
    bundle[key] = value
    with pytest.raises(EvidenceFormatError, match=message):
        parse_collateral(json.dumps(bundle).encode())


def test_missing_bundle_field(pki) -> None:
    bundle = _bundle(pki)
    del bundle["root_ca_crl"]
    with pytest.raises(EvidenceFormatError, match="root_ca_crl: missing"):
        parse_collateral(json.dumps(bundle).encode())


def test_bundle_not_json() -> None:
    with pytest.raises(EvidenceFormatError, match="not valid JSON"):
        parse_collateral(b"\xff\x00")


def _tcb_info_with(**changes) -> bytes:
    info = build_tcb_info([tcb_level("UpToDate")])
    info.update(changes)
    return json.dumps(info).encode()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"id": "SGX"}, "is not TDX TCB info v3"),
        ({"version": 2}, "is not TDX TCB info v3"),
        ({"tcbType": 1}, "tcbType"),
        ({"fmspc": "0011"}, r"tcbInfo.fmspc: expected a string|expected 6 bytes"),
        ({"issueDate": "yesterday"}, "issueDate: not an ISO 8601 time"),
        ({"nextUpdate": "2025-02-01T00:00:00"}, "nextUpdate: time has no zone"),
        ({"tcbLevels": []}, "tcbLevels: empty"),
        ({"tcbEvaluationDataNumber": True}, "tcbEvaluationDataNumber"),
        ({"tcbLevels": [tcb_level("Fine")]}, r"tcbLevels\[0\].tcbStatus: unknown status"),
    ],
)
def test_tcb_info_errors_name_the_field(changes: dict, message: str) -> None:
    with pytest.raises(EvidenceFormatError, match=message):
        parse_tcb_info(_tcb_info_with(**changes))


def test_tcb_level_needs_sixteen_components() -> None:
    level = tcb_level("UpToDate")
    level["tcb"]["sgxtcbcomponents"] = level["tcb"]["sgxtcbcomponents"][:15]
    with pytest.raises(EvidenceFormatError, match="sgxtcbcomponents: expected 16"):
        parse_tcb_info(_tcb_info_with(tcbLevels=[level]))


def test_svn_out_of_range() -> None:
    level = tcb_level("UpToDate")
    level["tcb"]["tdxtcbcomponents"][0]["svn"] = 256
    with pytest.raises(EvidenceFormatError, match=r"\[0\].svn"):
        parse_tcb_info(_tcb_info_with(tcbLevels=[level]))


def test_too_many_levels_are_refused() -> None:
    with pytest.raises(EvidenceFormatError, match="tcbLevels: expected a list of at most 128"):
        parse_tcb_info(_tcb_info_with(tcbLevels=[tcb_level("UpToDate")] * 129))
    with pytest.raises(EvidenceFormatError, match="exceeds the limit"):
        parse_tcb_info(_tcb_info_with(tcbLevels=[tcb_level("UpToDate")] * 300))


def test_qe_identity_errors() -> None:
    identity = build_qe_identity()
    identity["id"] = "QE"
    with pytest.raises(EvidenceFormatError, match="not TD_QE v2"):
        parse_qe_identity(json.dumps(identity).encode())
    identity = build_qe_identity([(4, "SWHardeningNeeded")])
    with pytest.raises(EvidenceFormatError, match="unknown status"):
        parse_qe_identity(json.dumps(identity).encode())


def test_split_signed_response_cuts_the_exact_text() -> None:
    inner = '{"id":"TDX",  "version":3}'
    body = ('{"tcbInfo": ' + inner + ',"signature":"' + "ab" * 64 + '"}').encode()
    signed = split_signed_response(body, "tcbInfo")
    assert signed.body == inner.encode()
    assert signed.signature == b"\xab" * 64
    with pytest.raises(EvidenceFormatError, match="signature"):
        split_signed_response(b'{"tcbInfo": {}}', "tcbInfo")


def test_pck_extension_round_trip(pki) -> None:
    extension = parse_pck_extensions(pki.pck)
    assert extension.tcb_components == pki.platform_tcb.sgx_components
    assert extension.pce_svn == 11
    assert extension.fmspc == pki.platform_tcb.fmspc
    assert extension.sgx_type == 1
    assert extension.smt_enabled is True and extension.dynamic_platform is False


def _pck_with_extension(pki, value: bytes):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    return (
        x509.CertificateBuilder()
        .subject_name(pki.pck.subject)
        .issuer_name(pki.platform_ca.subject)
        .public_key(pki.pck_key.public_key())
        .serial_number(1)
        .not_valid_before(pki.pck.not_valid_before_utc)
        .not_valid_after(pki.pck.not_valid_after_utc)
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.840.113741.1.13.1"), value),
            critical=False,
        )
        .sign(pki.platform_ca_key, hashes.SHA256())
    )


def test_pck_extension_missing_entry_is_named(pki) -> None:
    good = sgx_extension(PlatformTcb())
    pce_id_oid = bytes.fromhex("060a2a864886f84d010d0103")  # 1.2.840.113741.1.13.1.3
    assert pce_id_oid in good
    broken = good.replace(pce_id_oid, bytes.fromhex("060a2a864886f84d010d0109"))
    with pytest.raises(EvidenceFormatError, match=r"missing entry 1.2.840.113741.1.13.1.3"):
        parse_pck_extensions(_pck_with_extension(pki, broken))


def test_pck_extension_bad_fmspc_length(pki) -> None:
    with pytest.raises(EvidenceFormatError, match="FMSPC: expected 6 bytes"):
        parse_pck_extensions(_pck_with_extension(pki, sgx_extension(PlatformTcb(fmspc=b"\1"))))


def test_pck_without_extension(pki) -> None:
    with pytest.raises(EvidenceFormatError, match="0 SGX extensions"):
        parse_pck_extensions(pki.platform_ca)


@pytest.mark.parametrize(
    ("der", "message"),
    [
        (b"\x30", "truncated DER element"),
        (b"\x30\x05\x02\x01", "exceeds"),
        (b"\x30\x81\x05" + bytes(5), "non-minimal DER length"),
        (b"\x30\x84\x00\x00\x00\x01\x00", "unsupported DER length form"),
        (b"\x30\x80\x00\x00", "unsupported DER length form"),
        (b"\x1f\x01\x00", "multi-byte DER tags"),
        (b"\x02\x01\x00\x02\x01\x00", "expected one DER element"),
    ],
)
def test_der_errors(der: bytes, message: str) -> None:
    with pytest.raises(EvidenceFormatError, match=message):
        read_single(der, "test")


def test_der_integer_and_boolean_rules() -> None:
    with pytest.raises(EvidenceFormatError, match="negative"):
        read_single(b"\x02\x01\x80", "t").as_unsigned("t")
    with pytest.raises(EvidenceFormatError, match="non-minimal DER INTEGER"):
        read_single(b"\x02\x02\x00\x01", "t").as_unsigned("t")
    with pytest.raises(EvidenceFormatError, match="BOOLEAN"):
        read_single(b"\x01\x01\x01", "t").as_bool("t")
    assert read_single(b"\x02\x02\x00\x80", "t").as_unsigned("t") == 128
    assert read_single(b"\x06\x03\x2a\x86\x48", "t").as_oid("t") == "1.2.840"


def test_pem_chain_limits(pki) -> None:
    with pytest.raises(EvidenceFormatError, match="needs a leaf and its issuer"):
        load_pem_chain(
            pki.pck_chain_pem().split(b"-----END CERTIFICATE-----")[0]
            + b"-----END CERTIFICATE-----\n",
            "chain",
        )
    with pytest.raises(EvidenceFormatError, match="more than 4"):
        load_pem_chain(pki.pck_chain_pem() * 2, "chain")
