"""Create a development SEV-SNP endorsement chain for the simulated TEE.

What it does: writes a dev ARK (RSA-4096, self-signed) and ASK (RSA-4096, signed by
the ARK) with RSA-PSS SHA-384 salt 48 like AMD's, and a VCEK (ECDSA P-384, signed by the
ASK) that carries AMD's VCEK extensions (productName, TCB SPLs 1.3.6.1.4.1.3704.1.3.x,
hwID 1.3.6.1.4.1.3704.1.4 = the simulated CHIP_ID). Names mimic AMD's but say
DEV-SIMULATED, and no pin matches the dev ARK, so only a trust store built with
``allow_simulated=True`` accepts it. Files: ark.pem, ask.pem, vcek.pem and
vcek-key.pem (0600, the simulated chip's signing key); with ``include_vlek`` also
asvk.pem, vlek.pem and vlek-key.pem. What it does not: keep the ARK/ASK private keys
(nothing can be re-issued from this chain) or make any real TEE claim.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from keybroker.attestation.snp.amd_extensions import (
    OID_BL_SPL,
    OID_CSP_ID,
    OID_FMC_SPL,
    OID_HWID,
    OID_PRODUCT_NAME,
    OID_SNP_SPL,
    OID_STRUCT_VERSION,
    OID_TEE_SPL,
    OID_UCODE_SPL,
    der_ia5_string,
    der_integer,
)
from keybroker.attestation.snp.cert_checks import AMD_RSA_KEY_BITS, amd_pss_padding
from keybroker.attestation.snp.product import PRODUCTS, hwid_size
from keybroker.attestation.snp.tcb import TCB_COMPONENTS

__all__ = ["DEFAULT_DEV_TCB", "DEV_MARK", "create_dev_chain"]

DEV_MARK = "DEV-SIMULATED"
DEV_ORGANIZATION = "sealbeam DEV SIMULATED (not Advanced Micro Devices)"
DEFAULT_DEV_TCB: Mapping[str, Mapping[str, int]] = {
    "Milan": {"bootloader": 4, "tee": 0, "snp": 22, "microcode": 213},
    "Genoa": {"bootloader": 9, "tee": 0, "snp": 23, "microcode": 72},
    "Turin": {"fmc": 1, "bootloader": 1, "tee": 1, "snp": 3, "microcode": 73},
}
_TCB_OIDS = {"bootloader": OID_BL_SPL, "tee": OID_TEE_SPL, "snp": OID_SNP_SPL,
             "microcode": OID_UCODE_SPL, "fmc": OID_FMC_SPL}
_RESERVED_SPL_OIDS = ("4", "5", "6", "7")  # present, zero, on AMD's Milan/Genoa VCEKs
_ROOT_LIFETIME = timedelta(days=25 * 365)
_LEAF_LIFETIME = timedelta(days=7 * 365)


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEV_ORGANIZATION),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _sign(builder: x509.CertificateBuilder, issuer_key: rsa.RSAPrivateKey) -> x509.Certificate:
    return builder.sign(issuer_key, hashes.SHA384(), rsa_padding=amd_pss_padding())


def _ca_certificate(subject: str, issuer: x509.Name | None, public_key: rsa.RSAPublicKey,
                    issuer_key: rsa.RSAPrivateKey, now: datetime) -> x509.Certificate:
    subject_name = _name(subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_name)
        .issuer_name(issuer or subject_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + _ROOT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0),
                       critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    return _sign(builder, issuer_key)


def _endorsement_certificate(common_name: str, issuer: x509.Certificate,
                             issuer_key: rsa.RSAPrivateKey, public_key: ec.EllipticCurvePublicKey,
                             product: str, tcb: Mapping[str, int],
                             identity: tuple[x509.ObjectIdentifier, bytes],
                             now: datetime) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + _LEAF_LIFETIME)
    )
    values: list[tuple[x509.ObjectIdentifier, bytes]] = [
        (OID_STRUCT_VERSION, der_integer(0)),
        (OID_PRODUCT_NAME, der_ia5_string(f"{product}-B0")),
    ]
    values += [(_TCB_OIDS[name], der_integer(tcb[name])) for name in TCB_COMPONENTS[product]]
    if product != "Turin":
        values += [(x509.ObjectIdentifier(f"1.3.6.1.4.1.3704.1.3.{minor}"), der_integer(0))
                   for minor in _RESERVED_SPL_OIDS]
    values.append(identity)
    for oid, value in values:
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
    return _sign(builder, issuer_key)


def _write_public(path: Path, certificate: x509.Certificate) -> None:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    path.chmod(0o644)


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """The simulated chip's key: created 0600 from the start, never world-readable."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        os.write(descriptor, pem)
    finally:
        os.close(descriptor)


def _check_tcb(product: str, tcb: Mapping[str, int]) -> dict[str, int]:
    if set(tcb) != set(TCB_COMPONENTS[product]):
        raise ValueError(f"{product} TCB needs exactly {TCB_COMPONENTS[product]}")
    for name, value in tcb.items():
        if not 0 <= value <= (0xFF if name == "microcode" else 0x7F):
            raise ValueError(f"TCB component {name} = {value} is out of range")
    return dict(tcb)


def create_dev_chain(
    directory: Path | str,
    *,
    product: str = "Milan",
    chip_id: bytes | None = None,
    tcb: Mapping[str, int] | None = None,
    include_vlek: bool = False,
    csp_id: str = "sealbeam-dev",
    force: bool = False,
) -> None:
    """Write a dev ARK/ASK/VCEK chain (and optionally ASVK/VLEK) for `product` into `directory`.

    ``chip_id`` is the simulated chip's hwID (64 bytes; 8 on Turin), random by default;
    ``tcb`` the VCEK's TCB (defaults per product). Refuses to overwrite unless ``force``.
    """
    if product not in PRODUCTS:
        raise ValueError(f"unknown SEV-SNP product {product!r}; expected one of {PRODUCTS}")
    hwid = chip_id if chip_id is not None else secrets.token_bytes(hwid_size(product))
    if len(hwid) != hwid_size(product):
        raise ValueError(f"{product} chip_id must be {hwid_size(product)} bytes")
    levels = _check_tcb(product, tcb if tcb is not None else DEFAULT_DEV_TCB[product])
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    if (target / "ark.pem").exists() and not force:
        raise FileExistsError(f"a dev chain already exists in {target} (use force=True)")
    now = datetime.now(timezone.utc)

    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=AMD_RSA_KEY_BITS)
    ark = _ca_certificate(f"ARK-{product}-{DEV_MARK}", None, ark_key.public_key(), ark_key, now)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=AMD_RSA_KEY_BITS)
    ask = _ca_certificate(f"SEV-{product}-{DEV_MARK}", ark.subject, ask_key.public_key(), ark_key,
                          now)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    vcek = _endorsement_certificate(f"SEV-VCEK-{DEV_MARK}", ask, ask_key, vcek_key.public_key(),
                                    product, levels, (OID_HWID, hwid), now)
    _write_public(target / "ark.pem", ark)
    _write_public(target / "ask.pem", ask)
    _write_public(target / "vcek.pem", vcek)
    _write_private(target / "vcek-key.pem", vcek_key)
    if include_vlek:
        asvk_key = rsa.generate_private_key(public_exponent=65537, key_size=AMD_RSA_KEY_BITS)
        asvk = _ca_certificate(f"SEV-VLEK-{product}-{DEV_MARK}", ark.subject,
                               asvk_key.public_key(), ark_key, now)
        vlek_key = ec.generate_private_key(ec.SECP384R1())
        vlek = _endorsement_certificate(f"SEV-VLEK-{DEV_MARK}", asvk, asvk_key,
                                        vlek_key.public_key(), product, levels,
                                        (OID_CSP_ID, der_ia5_string(csp_id)), now)
        _write_public(target / "asvk.pem", asvk)
        _write_public(target / "vlek.pem", vlek)
        _write_private(target / "vlek-key.pem", vlek_key)
