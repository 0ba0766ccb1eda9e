"""Intel TDX DCAP structures, written byte for byte: the one builder of quotes and collateral.

What it does: encodes the SGX extension of a PCK certificate (DER), issues the certificates
and CRLs of an Intel-like PKI, lays out TD report bodies (TD 1.0 and 1.5) and QE reports,
signs a quote v4 or v5 end to end (QE report under the PCK key binding a fresh attestation
key, the quote under that key) and builds TCB info v3 / QE identity v2 collateral signed by
a TCB signing key. The simulated TDX attester (``simulated_tdx``) and the tests' quote
builder both assemble their quotes here, so the two cannot drift apart.

What it does not: choose values (every measurement, SVN and date comes from the caller),
read or write files, verify anything, or touch Intel's keys.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

__all__ = [
    "INTEL_QE_VENDOR_ID",
    "INTEL_TD_QE_MRSIGNER",
    "QE_REPORT_SIZE",
    "SGX_OID",
    "QeReportFields",
    "SignedQuote",
    "build_crl",
    "collateral_bundle",
    "iso_time",
    "issue_certificate",
    "pem_chain",
    "qe_identity_document",
    "qe_report",
    "qe_tcb_level",
    "raw_signature",
    "sgx_certificate_extension",
    "sgx_extension",
    "sign_quote",
    "tcb_info_document",
    "tcb_level",
    "td_report_body",
]

INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
INTEL_TD_QE_MRSIGNER = bytes.fromhex(
    "dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")
SGX_OID = "1.2.840.113741.1.13.1"
QE_REPORT_SIZE = 384
_ATTESTATION_KEY_TYPE_ECDSA_P256 = 2
_TEE_TYPE_TDX = 0x81
_CERTIFICATION_PCK_CHAIN = 5
_CERTIFICATION_QE_REPORT = 6
_TD_BODY_TYPE_10 = 2
_TD_BODY_TYPE_15 = 3


# --- a tiny DER encoder for the SGX extension ------------------------------------------------
def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + content


def _oid(dotted: str) -> bytes:
    arcs = [int(arc) for arc in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return _der(0x06, bytes(body))


def _uint(value: int, tag: int = 0x02) -> bytes:
    return _der(tag, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big"))


def _entry(suffix: str, value: bytes) -> bytes:
    return _der(0x30, _oid(f"{SGX_OID}{suffix}") + value)


def _boolean(flag: bool) -> bytes:
    return _der(0x01, b"\xff" if flag else b"\x00")


def sgx_extension(*, ppid: bytes, sgx_components: Sequence[int], pce_svn: int, cpu_svn: bytes,
                  pce_id: bytes, fmspc: bytes, sgx_type: int,
                  configuration: tuple[bool, bool, bool] | None = None) -> bytes:
    """DER of Intel's SGX extension; ``configuration`` = (dynamic platform, cached keys, SMT)."""
    components = b"".join(_entry(f".2.{index}", _uint(svn))
                          for index, svn in enumerate(sgx_components, 1))
    tcb = _der(0x30, components + _entry(".2.17", _uint(pce_svn))
               + _entry(".2.18", _der(0x04, cpu_svn)))
    body = (_entry(".1", _der(0x04, ppid)) + _entry(".2", tcb) + _entry(".3", _der(0x04, pce_id))
            + _entry(".4", _der(0x04, fmspc)) + _entry(".5", _uint(sgx_type, tag=0x0A))
            + _entry(".6", _der(0x04, bytes(16))))
    if configuration is not None:
        flags = b"".join(_entry(f".7.{index}", _boolean(flag))
                         for index, flag in enumerate(configuration, 1))
        body += _entry(".7", _der(0x30, flags))
    return _der(0x30, body)


def sgx_certificate_extension(extension_der: bytes) -> x509.UnrecognizedExtension:
    """The SGX extension as a certificate extension (cryptography has no type for it)."""
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_OID), extension_der)


# --- the PKI ----------------------------------------------------------------------------------
def issue_certificate(subject: x509.Name, key: ec.EllipticCurvePrivateKey,
                      issuer: x509.Certificate | None, issuer_key: ec.EllipticCurvePrivateKey,
                      *, ca: bool, path_length: int | None, not_before: datetime,
                      not_after: datetime,
                      extensions: Sequence[x509.ExtensionType] = ()) -> x509.Certificate:
    """A certificate for ``key``; self-signed when ``issuer`` is None. ECDSA-SHA256 like Intel."""
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.subject if issuer is not None else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length),
                              critical=True))
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def build_crl(issuer: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey, *,
              last_update: datetime, next_update: datetime,
              revoked_serials: Sequence[int] = ()) -> bytes:
    """DER CRL signed by ``issuer``, revoking ``revoked_serials`` as of ``last_update``."""
    builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject)
               .last_update(last_update).next_update(next_update))
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial)
            .revocation_date(last_update).build())
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def pem_chain(*certificates: x509.Certificate) -> bytes:
    """Concatenated PEM, leaf first, as PCS and the quote's certification data carry it."""
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certificates)


def raw_signature(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """ECDSA-P256-SHA256 as Intel writes it: r || s, 32 bytes each."""
    r, s = utils.decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# --- quotes -----------------------------------------------------------------------------------
def td_report_body(*, tee_tcb_svn: bytes, mr_seam: bytes, mr_signer_seam: bytes,
                   seam_attributes: bytes, td_attributes: bytes, xfam: bytes, mr_td: bytes,
                   mr_config_id: bytes, mr_owner: bytes, mr_owner_config: bytes,
                   rtmrs: Sequence[bytes], report_data: bytes,
                   td15: tuple[bytes, bytes] | None = None) -> bytes:
    """A TD 1.0 report body, or TD 1.5 when ``td15`` = (TEE_TCB_SVN_2, MRSERVICETD) is given."""
    body = (tee_tcb_svn + mr_seam + mr_signer_seam + seam_attributes + td_attributes + xfam
            + mr_td + mr_config_id + mr_owner + mr_owner_config + b"".join(rtmrs) + report_data)
    if td15 is not None:
        body += td15[0] + td15[1]
    return body


@dataclass(frozen=True)
class QeReportFields:
    """What a QE report says about the quoting enclave (its identity, checked by QE identity)."""

    attributes: bytes
    mr_signer: bytes = INTEL_TD_QE_MRSIGNER
    isv_prod_id: int = 2
    isv_svn: int = 4
    misc_select: int = 0


def qe_report(qe: QeReportFields, report_data: bytes) -> bytes:
    """An SGX report body of the quoting enclave carrying ``report_data`` (384 bytes)."""
    report = (bytes(16)  # CPUSVN
              + struct.pack("<I", qe.misc_select) + bytes(28) + qe.attributes
              + b"\xee" * 32  # MRENCLAVE
              + bytes(32) + qe.mr_signer + bytes(96)
              + struct.pack("<HH", qe.isv_prod_id, qe.isv_svn) + bytes(60) + report_data)
    if len(report) != QE_REPORT_SIZE:
        raise ValueError(f"QE report is {len(report)} bytes, expected {QE_REPORT_SIZE}: "
                         "attributes, MRSIGNER or report_data have the wrong size")
    return report


@dataclass(frozen=True)
class SignedQuote:
    """The quote bytes and where each signed region lies in them."""

    data: bytes
    regions: dict[str, tuple[int, int]] = field(default_factory=dict)


def sign_quote(*, version: int, body: bytes, pck_key: ec.EllipticCurvePrivateKey,
               pck_chain_pem: bytes, qe: QeReportFields, qe_auth_data: bytes,
               body_type: int = _TD_BODY_TYPE_10,
               qe_vendor_id: bytes = INTEL_QE_VENDOR_ID) -> SignedQuote:
    """Header, body and signature data of a quote v4 (or v5 with a body descriptor), signed."""
    attestation_key = ec.generate_private_key(ec.SECP256R1())
    attestation_public = attestation_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
    header = (struct.pack("<HHIHH", version, _ATTESTATION_KEY_TYPE_ECDSA_P256, _TEE_TYPE_TDX,
                          0, 0) + qe_vendor_id + bytes(20))
    descriptor = struct.pack("<HI", body_type, len(body)) if version == 5 else b""
    signed = header + descriptor + body
    binding = hashlib.sha256(attestation_public + qe_auth_data).digest() + bytes(32)
    report = qe_report(qe, binding)
    chain = pck_chain_pem + b"\0"
    certification = (report + raw_signature(pck_key, report)
                     + struct.pack("<H", len(qe_auth_data)) + qe_auth_data
                     + struct.pack("<HI", _CERTIFICATION_PCK_CHAIN, len(chain)) + chain)
    signature_data = (raw_signature(attestation_key, signed) + attestation_public
                      + struct.pack("<HI", _CERTIFICATION_QE_REPORT, len(certification))
                      + certification)
    signature_start = len(signed) + 4
    report_start = signature_start + 128 + 6
    auth_start = report_start + QE_REPORT_SIZE + 64 + 2
    regions = {
        "header": (0, len(header)),
        "body": (len(header) + len(descriptor), len(signed)),
        "quote_signature": (signature_start, signature_start + 64),
        "attestation_key": (signature_start + 64, signature_start + 128),
        "qe_report": (report_start, report_start + QE_REPORT_SIZE),
        "qe_report_signature": (report_start + QE_REPORT_SIZE, report_start + QE_REPORT_SIZE + 64),
        "qe_auth_data": (auth_start, auth_start + len(qe_auth_data)),
    }
    return SignedQuote(signed + struct.pack("<I", len(signature_data)) + signature_data, regions)


# --- collateral -------------------------------------------------------------------------------
def iso_time(moment: datetime) -> str:
    """PCS's timestamp form (UTC, seconds, ``Z``)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def tcb_level(status: str, *, sgx: Sequence[int], pce_svn: int, tdx: Sequence[int], date: str,
              advisories: Sequence[str] = ()) -> dict:
    """One entry of TCB info's ``tcbLevels``."""
    level: dict = {"tcb": {"sgxtcbcomponents": [{"svn": svn} for svn in sgx],
                           "pcesvn": pce_svn,
                           "tdxtcbcomponents": [{"svn": svn} for svn in tdx]},
                   "tcbDate": date, "tcbStatus": status}
    if advisories:
        level["advisoryIDs"] = list(advisories)
    return level


def tcb_info_document(levels: list[dict], *, fmspc: bytes, issue_date: datetime,
                      next_update: datetime, evaluation_number: int,
                      module_identities: list[dict] | None = None) -> dict:
    """TCB info v3 for TDX (the ``tcbInfo`` object PCS signs)."""
    info: dict = {
        "id": "TDX", "version": 3, "issueDate": iso_time(issue_date),
        "nextUpdate": iso_time(next_update), "fmspc": fmspc.hex().upper(), "pceId": "0000",
        "tcbType": 0, "tcbEvaluationDataNumber": evaluation_number,
        "tdxModule": {"mrsigner": "00" * 48, "attributes": "00" * 8, "attributesMask": "FF" * 8},
        "tcbLevels": levels,
    }
    if module_identities is not None:
        info["tdxModuleIdentities"] = module_identities
    return info


def qe_tcb_level(isv_svn: int, status: str, *, date: str,
                 advisories: Sequence[str] = ()) -> dict:
    """One entry of QE identity's ``tcbLevels``."""
    level: dict = {"tcb": {"isvsvn": isv_svn}, "tcbDate": date, "tcbStatus": status}
    if advisories:
        level["advisoryIDs"] = list(advisories)
    return level


def qe_identity_document(levels: list[dict], *, attributes: bytes, issue_date: datetime,
                         next_update: datetime, evaluation_number: int,
                         mr_signer: bytes = INTEL_TD_QE_MRSIGNER, isv_prod_id: int = 2) -> dict:
    """QE identity v2 for the TD quoting enclave (the ``enclaveIdentity`` object PCS signs)."""
    return {
        "id": "TD_QE", "version": 2, "issueDate": iso_time(issue_date),
        "nextUpdate": iso_time(next_update), "tcbEvaluationDataNumber": evaluation_number,
        "miscselect": "00000000", "miscselectMask": "FFFFFFFF",
        "attributes": attributes.hex().upper(),
        "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": mr_signer.hex().upper(), "isvprodid": isv_prod_id, "tcbLevels": levels,
    }


def collateral_bundle(*, platform_ca_chain: bytes, root_ca_crl: bytes, pck_crl: bytes,
                      tcb_signing_chain: bytes, tcb_info: dict, qe_identity: dict,
                      signing_key: ec.EllipticCurvePrivateKey) -> bytes:
    """QuoteCollateralV3-shaped JSON: CRLs as DER hex, both documents signed by ``signing_key``."""
    tcb_text = json.dumps(tcb_info, separators=(",", ":"))
    qe_text = json.dumps(qe_identity, separators=(",", ":"))
    bundle = {
        "pck_crl_issuer_chain": platform_ca_chain.decode("ascii"),
        "root_ca_crl": root_ca_crl.hex(),
        "pck_crl": pck_crl.hex(),
        "tcb_info_issuer_chain": tcb_signing_chain.decode("ascii"),
        "tcb_info": tcb_text,
        "tcb_info_signature": raw_signature(signing_key, tcb_text.encode()).hex(),
        "qe_identity_issuer_chain": tcb_signing_chain.decode("ascii"),
        "qe_identity": qe_text,
        "qe_identity_signature": raw_signature(signing_key, qe_text.encode()).hex(),
    }
    return json.dumps(bundle).encode("ascii")
