"""A simulated Intel TDX attester for machines without TDX: real DCAP quotes under a dev root.

What it does: `create_dev_tdx_chain` writes an Intel-like PKI into a directory — a dev root
CA (``root.pem``), a PCK Platform CA, a PCK certificate carrying Intel's SGX extension
(FMSPC, PCE SVN, TCB components), the PCK key (``pck-key.pem``, 0600) — and signed collateral
(``collateral.json``: TCB info v3 and QE identity v2 signed by a TCB signing certificate,
CRLs), valid for a year, under which the simulated platform is ``UpToDate``.
`SimulatedTdxProvider` produces quotes v4 or v5 in exactly Intel's format: a TD report body
with the caller's report_data, a QE report signed by the PCK key that binds a fresh
attestation key, the quote signed by that key; endorsements carry the collateral. It always
announces itself (``simulated = True``), and its chain ends at a dev root that a broker
trusts only where the policy allows simulated evidence. The bytes themselves are laid out
and signed by ``tdx_quote_builder``, which the tests' quote builder uses too.

What it does not: isolate anything — plaintext next to it is as exposed as on any host —
or touch Intel's keys.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclave_workers.evidence.base import Evidence, EvidenceUnavailableError, check_report_data
from enclave_workers.evidence.tdx_quote_builder import (
    QeReportFields,
    build_crl,
    collateral_bundle,
    iso_time,
    issue_certificate,
    pem_chain,
    qe_identity_document,
    qe_tcb_level,
    sgx_certificate_extension,
    sgx_extension,
    sign_quote,
    tcb_info_document,
    tcb_level,
    td_report_body,
)

__all__ = [
    "DEV_MRTD",
    "DEV_TDX_ROOT_FILE",
    "SimulatedTdxProvider",
    "create_dev_tdx_chain",
]

DEV_MRTD = hashlib.sha384(b"sealbeam simulated TDX worker, MRTD v1").hexdigest()
"""MRTD of the simulated TD (48 bytes of hex)."""

DEV_TDX_ROOT_FILE = "root.pem"
_PCK_CHAIN_FILE = "pck-chain.pem"
_PCK_KEY_FILE = "pck-key.pem"
_COLLATERAL_FILE = "collateral.json"
_MAX_FILE = 256 * 1024
_FMSPC = bytes.fromhex("00806f050000")
_SGX_COMPONENTS = (5, 5, 2, 2, 3, 1, 0, 3) + (0,) * 8
_PCE_SVN = 11
_QE_SVN = 4
_TEE_TCB_SVN = bytes([3, 0, 5]) + bytes(13)
_XFAM = bytes.fromhex("e718060000000000")
_TD_ATTRIBUTES = bytes.fromhex("0000001000000000")  # SEPT_VE_DISABLE, no debug
_QE = QeReportFields(attributes=bytes.fromhex("11000000000000000000000000000000"),
                     isv_svn=_QE_SVN)
_COLLATERAL_DAYS = 365
_CERTIFICATE_DAYS = 3650
_EVALUATION_NUMBER = 1


# --- the dev PKI and its collateral ---------------------------------------------------------
def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sealbeam development")])


def _issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
           issuer_key: ec.EllipticCurvePrivateKey, now: datetime, *, ca: bool,
           extensions: tuple[x509.ExtensionType, ...] = ()) -> x509.Certificate:
    return issue_certificate(_name(subject), key, issuer, issuer_key, ca=ca,
                             path_length=1 if ca else None,
                             not_before=now - timedelta(days=1),
                             not_after=now + timedelta(days=_CERTIFICATE_DAYS),
                             extensions=extensions)


def _pck_extension() -> x509.UnrecognizedExtension:
    return sgx_certificate_extension(sgx_extension(
        ppid=os.urandom(16), sgx_components=_SGX_COMPONENTS, pce_svn=_PCE_SVN,
        cpu_svn=bytes(16), pce_id=b"\x00\x00", fmspc=_FMSPC, sgx_type=1))


def _collateral(root: x509.Certificate, root_key: ec.EllipticCurvePrivateKey,
                platform_ca: x509.Certificate, platform_ca_key: ec.EllipticCurvePrivateKey,
                now: datetime) -> bytes:
    signing_key = ec.generate_private_key(ec.SECP256R1())
    signing = _issue("sealbeam dev TDX TCB Signing", signing_key, root, root_key, now, ca=False)
    issued, next_update = now - timedelta(days=1), now + timedelta(days=_COLLATERAL_DAYS)
    level_date = iso_time(issued)
    tcb_info = tcb_info_document(
        [tcb_level("UpToDate", sgx=_SGX_COMPONENTS, pce_svn=_PCE_SVN, tdx=_TEE_TCB_SVN,
                   date=level_date)],
        fmspc=_FMSPC, issue_date=issued, next_update=next_update,
        evaluation_number=_EVALUATION_NUMBER)
    qe_identity = qe_identity_document(
        [qe_tcb_level(_QE_SVN, "UpToDate", date=level_date)], attributes=_QE.attributes,
        issue_date=issued, next_update=next_update, evaluation_number=_EVALUATION_NUMBER)
    return collateral_bundle(
        platform_ca_chain=pem_chain(platform_ca, root),
        root_ca_crl=build_crl(root, root_key, last_update=issued, next_update=next_update),
        pck_crl=build_crl(platform_ca, platform_ca_key, last_update=issued,
                          next_update=next_update),
        tcb_signing_chain=pem_chain(signing, root), tcb_info=tcb_info, qe_identity=qe_identity,
        signing_key=signing_key)


def create_dev_tdx_chain(directory: Path | str, *, force: bool = False) -> None:
    """Write a dev root, a PCK chain and key, and collateral for a simulated TDX platform."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    if (target / DEV_TDX_ROOT_FILE).exists() and not force:
        raise FileExistsError(f"a dev TDX chain already exists in {target} (use force=True)")
    now = datetime.now(timezone.utc)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _issue("sealbeam dev TDX Root CA", root_key, None, root_key, now, ca=True)
    platform_ca_key = ec.generate_private_key(ec.SECP256R1())
    platform_ca = _issue("sealbeam dev TDX PCK Platform CA", platform_ca_key, root, root_key,
                         now, ca=True)
    pck_key = ec.generate_private_key(ec.SECP256R1())
    pck = _issue("sealbeam dev TDX PCK Certificate", pck_key, platform_ca, platform_ca_key, now,
                 ca=False, extensions=(_pck_extension(),))
    (target / DEV_TDX_ROOT_FILE).write_bytes(pem_chain(root))
    (target / _PCK_CHAIN_FILE).write_bytes(pem_chain(pck, platform_ca, root))
    (target / _COLLATERAL_FILE).write_bytes(
        _collateral(root, root_key, platform_ca, platform_ca_key, now))
    key_path = target / _PCK_KEY_FILE
    key_path.unlink(missing_ok=True)
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pck_key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


# --- quotes --------------------------------------------------------------------------------
def _read(path: Path) -> bytes:
    if not path.is_file():
        raise EvidenceUnavailableError(f"simulated TDX chain file {path} is missing "
                                       "(create it with create_dev_tdx_chain)")
    if path.stat().st_size > _MAX_FILE:
        raise EvidenceUnavailableError(f"simulated TDX chain file {path} is too large")
    return path.read_bytes()


@dataclass(frozen=True)
class _TdMeasurements:
    mr_td: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    mr_config_id: bytes
    mr_owner: bytes
    td_attributes: bytes


class SimulatedTdxProvider:
    """Real-format TDX quotes (v4, or v5 with a TD 1.0 body) signed under a dev chain."""

    tee = "tdx"
    simulated = True

    def __init__(self, chain_dir: Path | str, *, version: int = 4, mr_td: str = DEV_MRTD,
                 debug: bool = False, rtmrs: tuple[bytes, ...] = (bytes(48),) * 4,
                 mr_config_id: bytes = bytes(48), mr_owner: bytes = bytes(48),
                 with_collateral: bool = True) -> None:
        if version not in (4, 5):
            raise ValueError("simulated TDX quote version must be 4 or 5")
        measurement = bytes.fromhex(mr_td)
        if len(measurement) != 48 or len(rtmrs) != 4 or any(len(r) != 48 for r in rtmrs) \
                or len(mr_config_id) != 48 or len(mr_owner) != 48:
            raise ValueError("MRTD, RTMRs, MRCONFIGID and MROWNER must be 48 bytes each")
        directory = Path(chain_dir)
        self._chain_pem = _read(directory / _PCK_CHAIN_FILE)
        try:
            key = serialization.load_pem_private_key(_read(directory / _PCK_KEY_FILE), None)
        except (ValueError, TypeError):
            raise EvidenceUnavailableError(f"{directory / _PCK_KEY_FILE} is not a PEM key") \
                from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise EvidenceUnavailableError("the dev PCK key is not an ECDSA key")
        self._pck_key = key
        self._collateral = _read(directory / _COLLATERAL_FILE) if with_collateral else None
        self.version = version
        attributes = bytearray(_TD_ATTRIBUTES)
        attributes[0] |= 0x01 if debug else 0
        self._td = _TdMeasurements(measurement, (rtmrs[0], rtmrs[1], rtmrs[2], rtmrs[3]),
                                   mr_config_id, mr_owner, bytes(attributes))

    def _body(self, report_data: bytes) -> bytes:
        td = self._td
        return td_report_body(tee_tcb_svn=_TEE_TCB_SVN, mr_seam=b"\x5e" * 48,
                              mr_signer_seam=bytes(48), seam_attributes=bytes(8),
                              td_attributes=td.td_attributes, xfam=_XFAM, mr_td=td.mr_td,
                              mr_config_id=td.mr_config_id, mr_owner=td.mr_owner,
                              mr_owner_config=bytes(48), rtmrs=td.rtmrs,
                              report_data=report_data)

    def quote(self, report_data: bytes) -> bytes:
        """One signed quote carrying ``report_data``."""
        return sign_quote(version=self.version, body=self._body(check_report_data(report_data)),
                          pck_key=self._pck_key, pck_chain_pem=self._chain_pem, qe=_QE,
                          qe_auth_data=bytes(32)).data

    def collect(self, report_data: bytes) -> Evidence:
        """Evidence for the broker: the quote, and the dev collateral as an endorsement."""
        endorsements = {"collateral": self._collateral} if self._collateral else {}
        return Evidence(tee=self.tee, evidence=self.quote(report_data),
                        endorsements=endorsements)
