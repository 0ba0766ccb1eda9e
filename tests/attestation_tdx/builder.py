"""Build real-format TDX quotes and PCS collateral signed by generated test roots.

What it does: creates an Intel-like PKI (root CA, PCK Platform CA, TCB signing cert, PCK
certificate carrying the SGX extension 1.2.840.113741.1.13.1 in DER), a quote v4 or v5
(TD 1.0 or TD 1.5 body) whose QE report is signed by the PCK key and binds a fresh
attestation key, TCB info v3 / QE identity v2 JSON signed by the TCB signing key, and
CRLs. Broker end-to-end tests reuse it. What it does not: touch real Intel keys or
vectors; everything here is generated per test session.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

__all__ = [
    "CLOCK",
    "INTEL_QE_VENDOR_ID",
    "INTEL_TD_QE_MRSIGNER",
    "BuiltQuote",
    "PlatformTcb",
    "QuoteSpec",
    "TestPki",
    "build_collateral",
    "build_crl",
    "build_qe_identity",
    "build_quote",
    "build_tcb_info",
    "clock_at",
    "later",
    "make_pki",
    "sgx_extension",
    "tcb_level",
]

CLOCK = datetime(2025, 1, 15, tzinfo=timezone.utc)
CERT_NOT_BEFORE = datetime(2020, 1, 1, tzinfo=timezone.utc)
CERT_NOT_AFTER = datetime(2040, 1, 1, tzinfo=timezone.utc)
COLLATERAL_ISSUED = datetime(2025, 1, 1, tzinfo=timezone.utc)
COLLATERAL_NEXT_UPDATE = datetime(2025, 2, 1, tzinfo=timezone.utc)
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
INTEL_TD_QE_MRSIGNER = bytes.fromhex(
    "dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5"
)
SGX_OID = "1.2.840.113741.1.13.1"
DEFAULT_FMSPC = bytes.fromhex("00806f050000")


# --- a tiny DER encoder for the SGX extension ----------------------------------------
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
    raw = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return _der(tag, raw)


def _entry(oid: str, value: bytes) -> bytes:
    return _der(0x30, _oid(oid) + value)


@dataclass(frozen=True)
class PlatformTcb:
    """What the PCK certificate says about the platform."""

    sgx_components: tuple[int, ...] = (5, 5, 2, 2, 3, 1, 0, 3) + (0,) * 8
    pce_svn: int = 11
    fmspc: bytes = DEFAULT_FMSPC
    pce_id: bytes = b"\x00\x00"
    cpu_svn: bytes = bytes(16)
    sgx_type: int = 1


def sgx_extension(tcb: PlatformTcb) -> bytes:
    """DER of the Intel SGX extension for a PCK certificate."""
    components = b"".join(
        _entry(f"{SGX_OID}.2.{index}", _uint(svn))
        for index, svn in enumerate(tcb.sgx_components, 1)
    )
    tcb_sequence = _der(
        0x30,
        components
        + _entry(f"{SGX_OID}.2.17", _uint(tcb.pce_svn))
        + _entry(f"{SGX_OID}.2.18", _der(0x04, tcb.cpu_svn)),
    )
    configuration = _der(
        0x30,
        _entry(f"{SGX_OID}.7.1", _der(0x01, b"\x00"))
        + _entry(f"{SGX_OID}.7.2", _der(0x01, b"\xff"))
        + _entry(f"{SGX_OID}.7.3", _der(0x01, b"\xff")),
    )
    return _der(
        0x30,
        _entry(f"{SGX_OID}.1", _der(0x04, bytes(range(16))))
        + _entry(f"{SGX_OID}.2", tcb_sequence)
        + _entry(f"{SGX_OID}.3", _der(0x04, tcb.pce_id))
        + _entry(f"{SGX_OID}.4", _der(0x04, tcb.fmspc))
        + _entry(f"{SGX_OID}.5", _uint(tcb.sgx_type, tag=0x0A))
        + _entry(f"{SGX_OID}.6", _der(0x04, bytes(16)))
        + _entry(f"{SGX_OID}.7", configuration),
    )


# --- the PKI -------------------------------------------------------------------------
def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Intel-like Corporation"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    path_length: int | None = None,
    not_before: datetime = CERT_NOT_BEFORE,
    not_after: datetime = CERT_NOT_AFTER,
    extensions: tuple[x509.ExtensionType, ...] = (),
) -> x509.Certificate:
    issuer_name = issuer.subject if issuer is not None else _name(subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class TestPki:
    """A generated Intel-like hierarchy: root -> Platform CA -> PCK; root -> TCB signing."""

    __test__ = False  # not a pytest test class, despite the name

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    platform_ca_key: ec.EllipticCurvePrivateKey
    platform_ca: x509.Certificate
    pck_key: ec.EllipticCurvePrivateKey
    pck: x509.Certificate
    tcb_signing_key: ec.EllipticCurvePrivateKey
    tcb_signing: x509.Certificate
    platform_tcb: PlatformTcb

    def pck_chain_pem(self, *, include_root: bool = True) -> bytes:
        certificates = [self.pck, self.platform_ca] + ([self.root] if include_root else [])
        return b"".join(cert.public_bytes(Encoding.PEM) for cert in certificates)

    def tcb_signing_chain_pem(self) -> str:
        return b"".join(
            cert.public_bytes(Encoding.PEM) for cert in (self.tcb_signing, self.root)
        ).decode()

    def platform_ca_chain_pem(self) -> str:
        return b"".join(
            cert.public_bytes(Encoding.PEM) for cert in (self.platform_ca, self.root)
        ).decode()

    def with_pck(
        self,
        platform_tcb: PlatformTcb | None = None,
        *,
        not_before: datetime = CERT_NOT_BEFORE,
        not_after: datetime = CERT_NOT_AFTER,
    ) -> TestPki:
        """The same hierarchy with a freshly issued PCK certificate."""
        tcb = platform_tcb or self.platform_tcb
        pck_key = ec.generate_private_key(ec.SECP256R1())
        pck = _pck_certificate(
            pck_key,
            self.platform_ca,
            self.platform_ca_key,
            tcb,
            not_before=not_before,
            not_after=not_after,
        )
        return replace(self, pck_key=pck_key, pck=pck, platform_tcb=tcb)


def _pck_certificate(
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    tcb: PlatformTcb,
    *,
    not_before: datetime = CERT_NOT_BEFORE,
    not_after: datetime = CERT_NOT_AFTER,
) -> x509.Certificate:
    extension = x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_OID), sgx_extension(tcb))
    return _certificate(
        "Test SGX PCK Certificate",
        key,
        issuer,
        issuer_key,
        ca=False,
        not_before=not_before,
        not_after=not_after,
        extensions=(extension,),
    )


def make_pki(
    platform_tcb: PlatformTcb | None = None, *, root_name: str = "Test SGX Root CA"
) -> TestPki:
    """A fresh hierarchy (P-256 keys, ECDSA-SHA256 signatures, like Intel's)."""
    tcb = platform_tcb or PlatformTcb()
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _certificate(root_name, root_key, None, root_key, ca=True, path_length=1)
    platform_ca_key = ec.generate_private_key(ec.SECP256R1())
    platform_ca = _certificate(
        "Test SGX PCK Platform CA", platform_ca_key, root, root_key, ca=True, path_length=0
    )
    pck_key = ec.generate_private_key(ec.SECP256R1())
    pck = _pck_certificate(pck_key, platform_ca, platform_ca_key, tcb)
    tcb_signing_key = ec.generate_private_key(ec.SECP256R1())
    tcb_signing = _certificate("Test SGX TCB Signing", tcb_signing_key, root, root_key, ca=False)
    return TestPki(
        root_key,
        root,
        platform_ca_key,
        platform_ca,
        pck_key,
        pck,
        tcb_signing_key,
        tcb_signing,
        tcb,
    )


def build_crl(
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    revoked_serials: tuple[int, ...] = (),
    *,
    last_update: datetime = COLLATERAL_ISSUED,
    next_update: datetime = COLLATERAL_NEXT_UPDATE,
) -> bytes:
    """DER CRL signed by ``issuer``."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(last_update)
        .next_update(next_update)
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(last_update)
            .build()
        )
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(Encoding.DER)


# --- quotes --------------------------------------------------------------------------
@dataclass(frozen=True)
class QuoteSpec:
    """The fields a test chooses; everything else is derived and signed."""

    version: int = 4
    body_type: int = 2  # v5 only: 2 = TD 1.0, 3 = TD 1.5
    tee_tcb_svn: bytes = bytes([3, 0, 5]) + bytes(13)
    mr_seam: bytes = b"\x5e" * 48
    mr_signer_seam: bytes = bytes(48)
    seam_attributes: bytes = bytes(8)
    td_attributes: bytes = bytes.fromhex("0000001000000000")
    xfam: bytes = bytes.fromhex("e718060000000000")
    mr_td: bytes = b"\x11" * 48
    mr_config_id: bytes = b"\x22" * 48
    mr_owner: bytes = b"\x33" * 48
    mr_owner_config: bytes = b"\x44" * 48
    rtmrs: tuple[bytes, ...] = (b"\x50" * 48, b"\x51" * 48, b"\x52" * 48, b"\x53" * 48)
    report_data: bytes = bytes(range(64))
    tee_tcb_svn_2: bytes = bytes([3, 0, 5]) + bytes(13)
    mr_service_td: bytes = bytes(48)
    qe_vendor_id: bytes = INTEL_QE_VENDOR_ID
    qe_mr_signer: bytes = INTEL_TD_QE_MRSIGNER
    qe_isv_prod_id: int = 2
    qe_isv_svn: int = 4
    qe_attributes: bytes = bytes.fromhex("11000000000000000000000000000000")
    qe_misc_select: int = 0
    qe_auth_data: bytes = bytes(range(32))
    trailing: bytes = b""


@dataclass(frozen=True)
class BuiltQuote:
    """The quote bytes and where each signed region lies in them."""

    data: bytes
    regions: dict[str, tuple[int, int]] = field(default_factory=dict)


def _raw_signature(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    r, s = utils.decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _td_body(spec: QuoteSpec, body_type: int) -> bytes:
    body = (
        spec.tee_tcb_svn
        + spec.mr_seam
        + spec.mr_signer_seam
        + spec.seam_attributes
        + spec.td_attributes
        + spec.xfam
        + spec.mr_td
        + spec.mr_config_id
        + spec.mr_owner
        + spec.mr_owner_config
        + b"".join(spec.rtmrs)
        + spec.report_data
    )
    if body_type == 3:
        body += spec.tee_tcb_svn_2 + spec.mr_service_td
    return body


def _qe_report(spec: QuoteSpec, report_data: bytes) -> bytes:
    report = (
        bytes(16)  # CPUSVN
        + struct.pack("<I", spec.qe_misc_select)
        + bytes(28)
        + spec.qe_attributes
        + b"\xee" * 32  # MRENCLAVE
        + bytes(32)
        + spec.qe_mr_signer
        + bytes(96)
        + struct.pack("<HH", spec.qe_isv_prod_id, spec.qe_isv_svn)
        + bytes(60)
        + report_data
    )
    assert len(report) == 384
    return report


def build_quote(pki: TestPki, spec: QuoteSpec | None = None) -> BuiltQuote:
    """A TDX quote signed end to end under ``pki``."""
    spec = spec or QuoteSpec()
    attestation_key = ec.generate_private_key(ec.SECP256R1())
    attestation_public = attestation_key.public_key().public_bytes(
        Encoding.X962, PublicFormat.UncompressedPoint
    )[1:]
    header = struct.pack("<HHIHH", spec.version, 2, 0x81, 0, 0) + spec.qe_vendor_id + bytes(20)
    body_type = spec.body_type if spec.version == 5 else 2
    body = _td_body(spec, body_type)
    descriptor = struct.pack("<HI", body_type, len(body)) if spec.version == 5 else b""
    signed = header + descriptor + body
    binding = hashlib.sha256(attestation_public + spec.qe_auth_data).digest() + bytes(32)
    qe_report = _qe_report(spec, binding)
    qe_signature = _raw_signature(pki.pck_key, qe_report)
    chain = pki.pck_chain_pem() + b"\0"
    inner = struct.pack("<HI", 5, len(chain)) + chain
    qe_certification = (
        qe_report
        + qe_signature
        + struct.pack("<H", len(spec.qe_auth_data))
        + spec.qe_auth_data
        + inner
    )
    signature_data = (
        _raw_signature(attestation_key, signed)
        + attestation_public
        + struct.pack("<HI", 6, len(qe_certification))
        + qe_certification
    )
    data = signed + struct.pack("<I", len(signature_data)) + signature_data + spec.trailing
    signature_data_start = len(signed) + 4
    qe_report_start = signature_data_start + 128 + 6
    auth_start = qe_report_start + 384 + 64 + 2
    regions = {
        "header": (0, 48),
        "body": (len(header) + len(descriptor), len(signed)),
        "quote_signature": (signature_data_start, signature_data_start + 64),
        "attestation_key": (signature_data_start + 64, signature_data_start + 128),
        "qe_report": (qe_report_start, qe_report_start + 384),
        "qe_report_signature": (qe_report_start + 384, qe_report_start + 448),
        "qe_auth_data": (auth_start, auth_start + len(spec.qe_auth_data)),
    }
    return BuiltQuote(data, regions)


# --- collateral ----------------------------------------------------------------------
def _components(svns: tuple[int, ...]) -> list[dict]:
    return [{"svn": svn} for svn in svns]


def tcb_level(
    status: str,
    *,
    sgx: tuple[int, ...] = (5, 5, 2, 2, 3, 1, 0, 3) + (0,) * 8,
    pce_svn: int = 11,
    tdx: tuple[int, ...] = (3, 0, 5) + (0,) * 13,
    advisories: tuple[str, ...] = (),
    date: str = "2024-03-13T00:00:00Z",
) -> dict:
    level = {
        "tcb": {
            "sgxtcbcomponents": _components(sgx),
            "pcesvn": pce_svn,
            "tdxtcbcomponents": _components(tdx),
        },
        "tcbDate": date,
        "tcbStatus": status,
    }
    if advisories:
        level["advisoryIDs"] = list(advisories)
    return level


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def build_tcb_info(
    levels: list[dict],
    *,
    fmspc: bytes = DEFAULT_FMSPC,
    module_identities: list[dict] | None = None,
    issue_date: datetime = COLLATERAL_ISSUED,
    next_update: datetime = COLLATERAL_NEXT_UPDATE,
    evaluation_number: int = 17,
) -> dict:
    info = {
        "id": "TDX",
        "version": 3,
        "issueDate": _iso(issue_date),
        "nextUpdate": _iso(next_update),
        "fmspc": fmspc.hex().upper(),
        "pceId": "0000",
        "tcbType": 0,
        "tcbEvaluationDataNumber": evaluation_number,
        "tdxModule": {"mrsigner": "00" * 48, "attributes": "00" * 8, "attributesMask": "FF" * 8},
        "tcbLevels": levels,
    }
    if module_identities is not None:
        info["tdxModuleIdentities"] = module_identities
    return info


def build_qe_identity(
    levels: Sequence[tuple[int, str]] = ((4, "UpToDate"),),
    *,
    advisories: tuple[str, ...] = (),
    issue_date: datetime = COLLATERAL_ISSUED,
    next_update: datetime = COLLATERAL_NEXT_UPDATE,
) -> dict:
    return {
        "id": "TD_QE",
        "version": 2,
        "issueDate": _iso(issue_date),
        "nextUpdate": _iso(next_update),
        "tcbEvaluationDataNumber": 17,
        "miscselect": "00000000",
        "miscselectMask": "FFFFFFFF",
        "attributes": "11000000000000000000000000000000",
        "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": INTEL_TD_QE_MRSIGNER.hex().upper(),
        "isvprodid": 2,
        "tcbLevels": [
            {
                "tcb": {"isvsvn": svn},
                "tcbDate": "2024-03-13T00:00:00Z",
                "tcbStatus": status,
                **(
                    {"advisoryIDs": list(advisories)} if status != "UpToDate" and advisories else {}
                ),
            }
            for svn, status in levels
        ],
    }


def build_collateral(
    pki: TestPki,
    tcb_info: dict,
    qe_identity: dict,
    *,
    revoked_pck_serials: tuple[int, ...] = (),
    revoked_ca_serials: tuple[int, ...] = (),
    signing_key: ec.EllipticCurvePrivateKey | None = None,
    crl_next_update: datetime = COLLATERAL_NEXT_UPDATE,
) -> bytes:
    """QuoteCollateralV3-shaped JSON bytes, signed by ``pki``'s TCB signing key."""
    key = signing_key or pki.tcb_signing_key
    tcb_text = json.dumps(tcb_info, separators=(",", ":"))
    qe_text = json.dumps(qe_identity, separators=(",", ":"))
    bundle = {
        "pck_crl_issuer_chain": pki.platform_ca_chain_pem(),
        "root_ca_crl": build_crl(
            pki.root, pki.root_key, revoked_ca_serials, next_update=crl_next_update
        ).hex(),
        "pck_crl": build_crl(
            pki.platform_ca, pki.platform_ca_key, revoked_pck_serials, next_update=crl_next_update
        ).hex(),
        "tcb_info_issuer_chain": pki.tcb_signing_chain_pem(),
        "tcb_info": tcb_text,
        "tcb_info_signature": _raw_signature(key, tcb_text.encode()).hex(),
        "qe_identity_issuer_chain": pki.tcb_signing_chain_pem(),
        "qe_identity": qe_text,
        "qe_identity_signature": _raw_signature(key, qe_text.encode()).hex(),
    }
    return json.dumps(bundle).encode()


def clock_at(moment: datetime = CLOCK) -> Callable[[], datetime]:
    """A clock for `TdxVerifier` fixed at ``moment``."""
    return lambda: moment


def later(days: int) -> datetime:
    return CLOCK + timedelta(days=days)
