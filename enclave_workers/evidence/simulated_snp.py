"""A simulated SEV-SNP attester for machines without SEV-SNP hardware.

What it does: writes attestation reports in exactly the AMD format (1184 bytes, version
2, 3, 4 or 5), with the caller's report_data, the dev chip's CHIP_ID and TCB taken from
the dev VCEK's extensions, signed ECDSA P-384 SHA-384 by the dev VCEK (or VLEK) key that
`create_dev_chain` made; endorsements are the dev chain's DER certificates. It always
announces itself (``simulated = True``) and its chain ends at a dev root that only a
trust store built with ``allow_simulated=True`` accepts. What it does not: isolate
anything — plaintext handled next to it is as exposed as on any other host.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from enclave_workers.evidence.base import Evidence, EvidenceUnavailableError, check_report_data
from keybroker.attestation.errors import AttestationError
from keybroker.attestation.simulated_location import location_host_data
from keybroker.attestation.snp import layout
from keybroker.attestation.snp.amd_extensions import read_endorsement_extensions
from keybroker.attestation.snp.cert_table import encode_cert_table
from keybroker.attestation.snp.product import cpuid_for_product
from keybroker.attestation.snp.report import SnpReport, encode_report, encode_signature
from keybroker.attestation.snp.tcb import encode_tcb

__all__ = ["DEV_MEASUREMENT", "DEV_POLICY", "SimulatedSnpProvider"]

DEV_MEASUREMENT = (
    "392bba6c11bd8216be46f1858761e86fece19f7e0f7863e29e8da83bb43afad8"
    "98a99501534aa265f5b1344100e3f21a"
)
"""SHA-384 of "sealbeam simulated SEV-SNP worker, launch measurement v1" (48 bytes)."""

DEV_POLICY = (1 << layout.POLICY_RESERVED_ONE_BIT) | (1 << layout.POLICY_SMT_BIT) | 0x1F
"""Guest policy 0x3001F: ABI 0.31, SMT allowed, no debug, no migration agent."""

_MAX_CHAIN_FILE = 64 * 1024
_FIRMWARE = (1, 55, 21)  # major, minor, build written as current and committed versions


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise EvidenceUnavailableError(f"simulated SEV-SNP chain file {path} is missing "
                                       "(run `sealbeam keys init`)")
    if path.stat().st_size > _MAX_CHAIN_FILE:
        raise EvidenceUnavailableError(f"simulated SEV-SNP chain file {path} is too large")
    return path.read_bytes()


def _certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError:
        raise EvidenceUnavailableError(f"{path} is not a PEM certificate") from None


class SimulatedSnpProvider:
    """Real-format SEV-SNP reports signed by the dev chain in ``chain_dir``."""

    tee = "sev-snp"
    simulated = True

    def __init__(
        self,
        chain_dir: Path | str,
        *,
        measurement: str = DEV_MEASUREMENT,
        policy: int = DEV_POLICY,
        version: int = 2,
        product: str | None = None,
        signing_key: str = "vcek",
        debug: bool = False,
        host_data: bytes = bytes(32),
        vmpl: int = 0,
        extended: bool = False,
        location: str | None = None,
    ) -> None:
        """``location``: a simulated location claim, carried in HOST_DATA
        (``keybroker.attestation.simulated_location``); not together with ``host_data``."""
        if version not in range(layout.MIN_VERSION, layout.MAX_VERSION + 1):
            raise ValueError(f"report version must be {layout.MIN_VERSION}..{layout.MAX_VERSION}")
        if signing_key not in ("vcek", "vlek"):
            raise ValueError("signing_key must be 'vcek' or 'vlek'")
        measurement_bytes = bytes.fromhex(measurement)
        if len(measurement_bytes) != 48:
            raise ValueError("measurement must be 48 bytes of hex")
        if location is not None:
            if any(host_data):
                raise ValueError("give host_data or a simulated location, not both")
            host_data = location_host_data(location)
        if len(host_data) != 32:
            raise ValueError("host_data must be 32 bytes")
        if not 0 <= vmpl <= 3:
            raise ValueError("vmpl must be 0..3")
        directory = Path(chain_dir)
        intermediate_file = "ask.pem" if signing_key == "vcek" else "asvk.pem"
        self._leaf = _certificate(directory / f"{signing_key}.pem")
        self._intermediate = _certificate(directory / intermediate_file)
        self._root = _certificate(directory / "ark.pem")
        self._key = self._load_key(directory / f"{signing_key}-key.pem")
        try:
            extensions = read_endorsement_extensions(self._leaf, signing_key)
        except AttestationError as exc:
            raise EvidenceUnavailableError(f"dev {signing_key} certificate is unusable: {exc}") \
                from None
        if product is not None and product != extensions.product:
            raise ValueError(f"the dev chain in {directory} is {extensions.product}, not {product}")
        self.product = extensions.product
        self.signing_key = signing_key
        self.version = version
        self.extended = extended
        hwid = extensions.hwid or b""
        tcb = encode_tcb(extensions.tcb, self.product)
        signer_info = (layout.SIGNING_KEY_VLEK if signing_key == "vlek"
                       else layout.SIGNING_KEY_VCEK) << layout.SIGNER_SIGNING_KEY_SHIFT
        family, model, stepping = cpuid_for_product(self.product)
        has_cpuid = version >= layout.CPUID_MIN_VERSION
        has_mitigations = version >= layout.MITIGATION_MIN_VERSION
        major, minor, build = _FIRMWARE
        self._template = SnpReport(
            version=version,
            guest_svn=1,
            policy=policy | ((1 << layout.POLICY_DEBUG_BIT) if debug else 0),
            vmpl=vmpl,
            signature_algo=layout.SIGNATURE_ALGO_ECDSA_P384_SHA384,
            current_tcb=tcb,
            platform_info=1 << layout.PLATFORM_SMT_EN_BIT,
            signer_info=signer_info,
            measurement=measurement_bytes,
            host_data=bytes(host_data),
            report_id=secrets.token_bytes(32),
            report_id_ma=b"\xff" * 32,
            reported_tcb=tcb,
            cpuid_fam_id=family if has_cpuid else None,
            cpuid_mod_id=model if has_cpuid else None,
            cpuid_step=stepping if has_cpuid else None,
            chip_id=hwid.ljust(64, b"\x00"),
            committed_tcb=tcb,
            current_build=build, current_minor=minor, current_major=major,
            committed_build=build, committed_minor=minor, committed_major=major,
            launch_tcb=tcb,
            launch_mit_vector=0 if has_mitigations else None,
            current_mit_vector=0 if has_mitigations else None,
        )

    @staticmethod
    def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
        try:
            key = serialization.load_pem_private_key(_read(path), password=None)
        except (ValueError, TypeError):
            raise EvidenceUnavailableError(f"{path} is not an unencrypted PEM private key") \
                from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve,
                                                                             ec.SECP384R1):
            raise EvidenceUnavailableError(f"{path} is not an ECDSA P-384 key")
        return key

    def _der(self, certificate: x509.Certificate) -> bytes:
        return certificate.public_bytes(serialization.Encoding.DER)

    def endorsements(self) -> dict[str, bytes]:
        """The dev chain as DER: the signing key's certificate, its intermediate, the ARK."""
        intermediate = "ask" if self.signing_key == "vcek" else "asvk"
        return {self.signing_key: self._der(self._leaf),
                intermediate: self._der(self._intermediate),
                "ark": self._der(self._root)}

    def report(self, report_data: bytes) -> bytes:
        """One signed 1184-byte report carrying ``report_data``."""
        unsigned = replace(self._template, report_data=check_report_data(report_data))
        body = encode_report(unsigned)[: layout.SIGNED_SIZE]
        r, s = decode_dss_signature(self._key.sign(body, ec.ECDSA(hashes.SHA384())))
        return encode_report(replace(unsigned, signature=encode_signature(r, s)))

    def collect(self, report_data: bytes) -> Evidence:
        """Evidence for the broker: the report (plus a certificate table when ``extended``)."""
        report = self.report(report_data)
        if self.extended:
            table = self.endorsements()
            table = {("ask" if name == "asvk" else name): blob for name, blob in table.items()}
            return Evidence(tee=self.tee, evidence=report + encode_cert_table(table),
                            endorsements={})
        return Evidence(tee=self.tee, evidence=report, endorsements=self.endorsements())
