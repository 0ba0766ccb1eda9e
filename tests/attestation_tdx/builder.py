"""Build real-format TDX quotes and PCS collateral signed by generated test roots.

What it does: creates an Intel-like PKI (root CA, PCK Platform CA, TCB signing cert, PCK
certificate carrying the SGX extension 1.2.840.113741.1.13.1 in DER), a quote v4 or v5
(TD 1.0 or TD 1.5 body) whose QE report is signed by the PCK key and binds a fresh
attestation key, TCB info v3 / QE identity v2 JSON signed by the TCB signing key, and
CRLs. Broker end-to-end tests reuse it. The bytes are laid out and signed by
``enclave_workers.evidence.tdx_quote_builder``, the module the simulated attester uses; this
file only picks test values (fixed dates, distinct measurements, knobs a test can turn). What
it does not: touch real Intel keys or vectors; everything here is generated per test session.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclave_workers.evidence import tdx_quote_builder
from enclave_workers.evidence.tdx_quote_builder import INTEL_QE_VENDOR_ID, INTEL_TD_QE_MRSIGNER

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
DEFAULT_FMSPC = bytes.fromhex("00806f050000")
LEVEL_DATE = "2024-03-13T00:00:00Z"
EVALUATION_NUMBER = 17
QE_ATTRIBUTES = bytes.fromhex("11000000000000000000000000000000")

BuiltQuote = tdx_quote_builder.SignedQuote
"""The quote bytes and where each signed region lies in them."""


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
    return tdx_quote_builder.sgx_extension(
        ppid=bytes(range(16)),
        sgx_components=tcb.sgx_components,
        pce_svn=tcb.pce_svn,
        cpu_svn=tcb.cpu_svn,
        pce_id=tcb.pce_id,
        fmspc=tcb.fmspc,
        sgx_type=tcb.sgx_type,
        configuration=(False, True, True),
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
    return tdx_quote_builder.issue_certificate(
        _name(subject),
        key,
        issuer,
        issuer_key,
        ca=ca,
        path_length=path_length,
        not_before=not_before,
        not_after=not_after,
        extensions=extensions,
    )


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
        return tdx_quote_builder.pem_chain(*certificates)

    def tcb_signing_chain_pem(self) -> str:
        return tdx_quote_builder.pem_chain(self.tcb_signing, self.root).decode()

    def platform_ca_chain_pem(self) -> str:
        return tdx_quote_builder.pem_chain(self.platform_ca, self.root).decode()

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
    extension = tdx_quote_builder.sgx_certificate_extension(sgx_extension(tcb))
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
    return tdx_quote_builder.build_crl(
        issuer,
        issuer_key,
        last_update=last_update,
        next_update=next_update,
        revoked_serials=revoked_serials,
    )


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
    qe_attributes: bytes = QE_ATTRIBUTES
    qe_misc_select: int = 0
    qe_auth_data: bytes = bytes(range(32))
    trailing: bytes = b""


def build_quote(pki: TestPki, spec: QuoteSpec | None = None) -> BuiltQuote:
    """A TDX quote signed end to end under ``pki``."""
    spec = spec or QuoteSpec()
    body_type = spec.body_type if spec.version == 5 else 2
    body = tdx_quote_builder.td_report_body(
        tee_tcb_svn=spec.tee_tcb_svn,
        mr_seam=spec.mr_seam,
        mr_signer_seam=spec.mr_signer_seam,
        seam_attributes=spec.seam_attributes,
        td_attributes=spec.td_attributes,
        xfam=spec.xfam,
        mr_td=spec.mr_td,
        mr_config_id=spec.mr_config_id,
        mr_owner=spec.mr_owner,
        mr_owner_config=spec.mr_owner_config,
        rtmrs=spec.rtmrs,
        report_data=spec.report_data,
        td15=(spec.tee_tcb_svn_2, spec.mr_service_td) if body_type == 3 else None,
    )
    qe = tdx_quote_builder.QeReportFields(
        attributes=spec.qe_attributes,
        mr_signer=spec.qe_mr_signer,
        isv_prod_id=spec.qe_isv_prod_id,
        isv_svn=spec.qe_isv_svn,
        misc_select=spec.qe_misc_select,
    )
    signed = tdx_quote_builder.sign_quote(
        version=spec.version,
        body=body,
        pck_key=pki.pck_key,
        pck_chain_pem=pki.pck_chain_pem(),
        qe=qe,
        qe_auth_data=spec.qe_auth_data,
        body_type=body_type,
        qe_vendor_id=spec.qe_vendor_id,
    )
    return BuiltQuote(signed.data + spec.trailing, signed.regions)


# --- collateral ----------------------------------------------------------------------
def tcb_level(
    status: str,
    *,
    sgx: tuple[int, ...] = (5, 5, 2, 2, 3, 1, 0, 3) + (0,) * 8,
    pce_svn: int = 11,
    tdx: tuple[int, ...] = (3, 0, 5) + (0,) * 13,
    advisories: tuple[str, ...] = (),
    date: str = LEVEL_DATE,
) -> dict:
    return tdx_quote_builder.tcb_level(
        status, sgx=sgx, pce_svn=pce_svn, tdx=tdx, date=date, advisories=advisories
    )


def build_tcb_info(
    levels: list[dict],
    *,
    fmspc: bytes = DEFAULT_FMSPC,
    module_identities: list[dict] | None = None,
    issue_date: datetime = COLLATERAL_ISSUED,
    next_update: datetime = COLLATERAL_NEXT_UPDATE,
    evaluation_number: int = EVALUATION_NUMBER,
) -> dict:
    return tdx_quote_builder.tcb_info_document(
        levels,
        fmspc=fmspc,
        issue_date=issue_date,
        next_update=next_update,
        evaluation_number=evaluation_number,
        module_identities=module_identities,
    )


def build_qe_identity(
    levels: Sequence[tuple[int, str]] = ((4, "UpToDate"),),
    *,
    advisories: tuple[str, ...] = (),
    issue_date: datetime = COLLATERAL_ISSUED,
    next_update: datetime = COLLATERAL_NEXT_UPDATE,
) -> dict:
    return tdx_quote_builder.qe_identity_document(
        [
            tdx_quote_builder.qe_tcb_level(
                svn,
                status,
                date=LEVEL_DATE,
                advisories=advisories if status != "UpToDate" else (),
            )
            for svn, status in levels
        ],
        attributes=QE_ATTRIBUTES,
        issue_date=issue_date,
        next_update=next_update,
        evaluation_number=EVALUATION_NUMBER,
    )


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
    return tdx_quote_builder.collateral_bundle(
        platform_ca_chain=tdx_quote_builder.pem_chain(pki.platform_ca, pki.root),
        root_ca_crl=build_crl(
            pki.root, pki.root_key, revoked_ca_serials, next_update=crl_next_update
        ),
        pck_crl=build_crl(
            pki.platform_ca, pki.platform_ca_key, revoked_pck_serials, next_update=crl_next_update
        ),
        tcb_signing_chain=tdx_quote_builder.pem_chain(pki.tcb_signing, pki.root),
        tcb_info=tcb_info,
        qe_identity=qe_identity,
        signing_key=signing_key or pki.tcb_signing_key,
    )


def clock_at(moment: datetime = CLOCK) -> Callable[[], datetime]:
    """A clock for `TdxVerifier` fixed at ``moment``."""
    return lambda: moment


def later(days: int) -> datetime:
    return CLOCK + timedelta(days=days)
