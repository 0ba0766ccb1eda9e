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
trusts only where the policy allows simulated evidence.

What it does not: isolate anything — plaintext next to it is as exposed as on any host —
or touch Intel's keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID

from enclave_workers.evidence.base import Evidence, EvidenceUnavailableError, check_report_data

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
_SGX_OID = "1.2.840.113741.1.13.1"
_INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
_INTEL_TD_QE_MRSIGNER = bytes.fromhex(
    "dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")
_FMSPC = bytes.fromhex("00806f050000")
_SGX_COMPONENTS = (5, 5, 2, 2, 3, 1, 0, 3) + (0,) * 8
_PCE_SVN = 11
_QE_SVN = 4
_TEE_TCB_SVN = bytes([3, 0, 5]) + bytes(13)
_XFAM = bytes.fromhex("e718060000000000")
_TD_ATTRIBUTES = bytes.fromhex("0000001000000000")  # SEPT_VE_DISABLE, no debug
_QE_ATTRIBUTES = bytes.fromhex("11000000000000000000000000000000")
_ATTESTATION_KEY_TYPE_ECDSA_P256 = 2
_TEE_TYPE_TDX = 0x81
_CERTIFICATION_PCK_CHAIN = 5
_CERTIFICATION_QE_REPORT = 6
_COLLATERAL_DAYS = 365


# --- the SGX extension of a PCK certificate (DER) ------------------------------------------
def _der(tag: int, content: bytes) -> bytes:
    if len(content) < 0x80:
        return bytes([tag, len(content)]) + content
    size = len(content).to_bytes((len(content).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


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


def _integer(value: int, tag: int = 0x02) -> bytes:
    return _der(tag, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big"))


def _entry(suffix: str, value: bytes) -> bytes:
    return _der(0x30, _oid(f"{_SGX_OID}{suffix}") + value)


def _sgx_extension() -> bytes:
    components = b"".join(_entry(f".2.{index}", _integer(svn))
                          for index, svn in enumerate(_SGX_COMPONENTS, 1))
    tcb = _der(0x30, components + _entry(".2.17", _integer(_PCE_SVN))
               + _entry(".2.18", _der(0x04, bytes(16))))
    return _der(0x30, _entry(".1", _der(0x04, os.urandom(16))) + _entry(".2", tcb)
                + _entry(".3", _der(0x04, b"\x00\x00")) + _entry(".4", _der(0x04, _FMSPC))
                + _entry(".5", _integer(1, tag=0x0A)) + _entry(".6", _der(0x04, bytes(16))))


# --- the dev PKI and its collateral ---------------------------------------------------------
def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sealbeam development")])


def _issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
           issuer_key: ec.EllipticCurvePrivateKey, now: datetime, *, ca: bool,
           extension: bytes | None = None) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(_name(subject))
               .issuer_name(issuer.subject if issuer is not None else _name(subject))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(days=1))
               .not_valid_after(now + timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=1 if ca else None),
                              critical=True))
    if extension is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(_SGX_OID), extension),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _crl(issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey, now: datetime) -> str:
    crl = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject)
           .last_update(now - timedelta(days=1))
           .next_update(now + timedelta(days=_COLLATERAL_DAYS)).sign(key, hashes.SHA256()))
    return crl.public_bytes(serialization.Encoding.DER).hex()


def _raw_signature(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    r, s = utils.decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _pem(*certificates: x509.Certificate) -> str:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM)
                    for cert in certificates).decode("ascii")


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _collateral(root: x509.Certificate, root_key: ec.EllipticCurvePrivateKey,
                platform_ca: x509.Certificate, platform_ca_key: ec.EllipticCurvePrivateKey,
                now: datetime) -> bytes:
    signing_key = ec.generate_private_key(ec.SECP256R1())
    signing = _issue("sealbeam dev TDX TCB Signing", signing_key, root, root_key, now, ca=False)
    window = {"issueDate": _iso(now - timedelta(days=1)),
              "nextUpdate": _iso(now + timedelta(days=_COLLATERAL_DAYS)),
              "tcbEvaluationDataNumber": 1}
    level = {"tcb": {"sgxtcbcomponents": [{"svn": svn} for svn in _SGX_COMPONENTS],
                     "pcesvn": _PCE_SVN,
                     "tdxtcbcomponents": [{"svn": svn} for svn in _TEE_TCB_SVN]},
             "tcbDate": _iso(now - timedelta(days=1)), "tcbStatus": "UpToDate"}
    tcb_info = json.dumps({"id": "TDX", "version": 3, **window, "fmspc": _FMSPC.hex().upper(),
                           "pceId": "0000", "tcbType": 0,
                           "tdxModule": {"mrsigner": "00" * 48, "attributes": "00" * 8,
                                         "attributesMask": "FF" * 8},
                           "tcbLevels": [level]}, separators=(",", ":"))
    qe_identity = json.dumps({"id": "TD_QE", "version": 2, **window, "miscselect": "00000000",
                              "miscselectMask": "FFFFFFFF",
                              "attributes": _QE_ATTRIBUTES.hex().upper(),
                              "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
                              "mrsigner": _INTEL_TD_QE_MRSIGNER.hex().upper(), "isvprodid": 2,
                              "tcbLevels": [{"tcb": {"isvsvn": _QE_SVN},
                                             "tcbDate": _iso(now - timedelta(days=1)),
                                             "tcbStatus": "UpToDate"}]},
                             separators=(",", ":"))
    bundle = {
        "pck_crl_issuer_chain": _pem(platform_ca, root),
        "root_ca_crl": _crl(root, root_key, now),
        "pck_crl": _crl(platform_ca, platform_ca_key, now),
        "tcb_info_issuer_chain": _pem(signing, root),
        "tcb_info": tcb_info,
        "tcb_info_signature": _raw_signature(signing_key, tcb_info.encode()).hex(),
        "qe_identity_issuer_chain": _pem(signing, root),
        "qe_identity": qe_identity,
        "qe_identity_signature": _raw_signature(signing_key, qe_identity.encode()).hex(),
    }
    return json.dumps(bundle).encode("ascii")


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
                 ca=False, extension=_sgx_extension())
    (target / DEV_TDX_ROOT_FILE).write_text(_pem(root), encoding="ascii")
    (target / _PCK_CHAIN_FILE).write_text(_pem(pck, platform_ca, root), encoding="ascii")
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
        return (_TEE_TCB_SVN + b"\x5e" * 48 + bytes(48) + bytes(8) + td.td_attributes + _XFAM
                + td.mr_td + td.mr_config_id + td.mr_owner + bytes(48) + b"".join(td.rtmrs)
                + report_data)

    def _qe_certification(self, attestation_public: bytes) -> bytes:
        auth_data = bytes(32)
        binding = hashlib.sha256(attestation_public + auth_data).digest() + bytes(32)
        qe_report = (bytes(16) + struct.pack("<I", 0) + bytes(28) + _QE_ATTRIBUTES
                     + b"\xee" * 32 + bytes(32) + _INTEL_TD_QE_MRSIGNER + bytes(96)
                     + struct.pack("<HH", 2, _QE_SVN) + bytes(60) + binding)
        chain = self._chain_pem + b"\0"
        return (qe_report + _raw_signature(self._pck_key, qe_report)
                + struct.pack("<H", len(auth_data)) + auth_data
                + struct.pack("<HI", _CERTIFICATION_PCK_CHAIN, len(chain)) + chain)

    def quote(self, report_data: bytes) -> bytes:
        """One signed quote carrying ``report_data``."""
        body = self._body(check_report_data(report_data))
        header = (struct.pack("<HHIHH", self.version, _ATTESTATION_KEY_TYPE_ECDSA_P256,
                              _TEE_TYPE_TDX, 0, 0) + _INTEL_QE_VENDOR_ID + bytes(20))
        descriptor = struct.pack("<HI", 2, len(body)) if self.version == 5 else b""
        signed = header + descriptor + body
        attestation_key = ec.generate_private_key(ec.SECP256R1())
        attestation_public = attestation_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
        certification = self._qe_certification(attestation_public)
        signature_data = (_raw_signature(attestation_key, signed) + attestation_public
                          + struct.pack("<HI", _CERTIFICATION_QE_REPORT, len(certification))
                          + certification)
        return signed + struct.pack("<I", len(signature_data)) + signature_data

    def collect(self, report_data: bytes) -> Evidence:
        """Evidence for the broker: the quote, and the dev collateral as an endorsement."""
        endorsements = {"collateral": self._collateral} if self._collateral else {}
        return Evidence(tee=self.tee, evidence=self.quote(report_data),
                        endorsements=endorsements)
