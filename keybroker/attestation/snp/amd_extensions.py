"""The AMD KDS x509v3 extensions of VCEK and VLEK certificates (OIDs 1.3.6.1.4.1.3704.1.*).

What it does: reads (and, for the dev chain, writes) the struct version, product name,
TCB security patch levels (blSPL, teeSPL, snpSPL, ucodeSPL, Turin's fmcSPL), the VCEK
hwID (= the report's CHIP_ID; raw, or DER OCTET STRING in newer certificates) and the
VLEK cspID. What it does not: check the certificate's signature (see `chain`) or compare
with a report (see `verify`).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from keybroker.attestation.errors import EvidenceFormatError
from keybroker.attestation.library_errors import library_reason
from keybroker.attestation.snp.product import hwid_size, product_from_product_name

__all__ = [
    "OID_BL_SPL",
    "OID_CSP_ID",
    "OID_FMC_SPL",
    "OID_HWID",
    "OID_PRODUCT_NAME",
    "OID_SNP_SPL",
    "OID_STRUCT_VERSION",
    "OID_TEE_SPL",
    "OID_UCODE_SPL",
    "EndorsementExtensions",
    "der_ia5_string",
    "der_integer",
    "der_octet_string",
    "read_endorsement_extensions",
]

_AMD = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = x509.ObjectIdentifier(f"{_AMD}.1")
OID_PRODUCT_NAME = x509.ObjectIdentifier(f"{_AMD}.2")
OID_BL_SPL = x509.ObjectIdentifier(f"{_AMD}.3.1")
OID_TEE_SPL = x509.ObjectIdentifier(f"{_AMD}.3.2")
OID_SNP_SPL = x509.ObjectIdentifier(f"{_AMD}.3.3")
OID_UCODE_SPL = x509.ObjectIdentifier(f"{_AMD}.3.8")
OID_FMC_SPL = x509.ObjectIdentifier(f"{_AMD}.3.9")
OID_HWID = x509.ObjectIdentifier(f"{_AMD}.4")
OID_CSP_ID = x509.ObjectIdentifier(f"{_AMD}.5")

_TCB_OIDS = {"bootloader": OID_BL_SPL, "tee": OID_TEE_SPL, "snp": OID_SNP_SPL,
             "microcode": OID_UCODE_SPL, "fmc": OID_FMC_SPL}
_TAG_INTEGER, _TAG_OCTET_STRING, _TAG_IA5_STRING = 0x02, 0x04, 0x16
_MAX_STRING = 256


@dataclass(frozen=True)
class EndorsementExtensions:
    """What a VCEK/VLEK certifies about the chip: product, TCB, and hwID or cspID."""

    struct_version: int
    product_name: str
    product: str
    tcb: dict[str, int]
    hwid: bytes | None
    csp_id: str | None


def _der_value(encoded: bytes, tag: int, what: str) -> bytes:
    """Content of a single short-or-long-form DER TLV with `tag`, nothing after it."""
    if len(encoded) < 2 or encoded[0] != tag:
        raise EvidenceFormatError(f"{what} is not DER tag 0x{tag:02x}")
    length, header = encoded[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count not in (1, 2) or len(encoded) < 2 + count:
            raise EvidenceFormatError(f"{what} has an unsupported DER length")
        length = int.from_bytes(encoded[2 : 2 + count], "big")
        header = 2 + count
    if len(encoded) != header + length:
        raise EvidenceFormatError(f"{what} DER length does not match its size")
    return encoded[header:]


def _small_integer(encoded: bytes, what: str) -> int:
    content = _der_value(encoded, _TAG_INTEGER, what)
    if not content or len(content) > 2 or content[0] & 0x80:
        raise EvidenceFormatError(f"{what} is not a small non-negative DER INTEGER")
    value = int.from_bytes(content, "big")
    if value > 0xFF:
        raise EvidenceFormatError(f"{what} is {value}, over 255")
    return value


def _ia5(encoded: bytes, what: str) -> str:
    content = _der_value(encoded, _TAG_IA5_STRING, what)
    if len(content) > _MAX_STRING or any(byte > 0x7F for byte in content):
        raise EvidenceFormatError(f"{what} is not a short IA5String")
    return content.decode("ascii")


def _hwid(encoded: bytes, size: int) -> bytes:
    """AMD's KDS writes the raw hwID bytes; newer certificates wrap them in an OCTET STRING."""
    if len(encoded) == size:
        return encoded
    content = _der_value(encoded, _TAG_OCTET_STRING, "hwID extension")
    if len(content) != size:
        raise EvidenceFormatError(f"hwID extension is {len(content)} bytes, expected {size}")
    return content


def _extension_bytes(certificate: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        extension = certificate.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:  # duplicate or malformed extensions
        raise EvidenceFormatError(
            "endorsement key certificate extensions are malformed: "
            f"{library_reason(exc)}") \
            from None
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise EvidenceFormatError(f"AMD extension {oid.dotted_string} has an unexpected type")
    return value.value


def _required(certificate: x509.Certificate, oid: x509.ObjectIdentifier, what: str) -> bytes:
    value = _extension_bytes(certificate, oid)
    if value is None:
        raise EvidenceFormatError(f"endorsement key certificate lacks the {what} extension "
                                  f"({oid.dotted_string})")
    return value


def read_endorsement_extensions(certificate: x509.Certificate, kind: str) -> EndorsementExtensions:
    """Parse the AMD extensions of a VCEK (`kind` "vcek") or VLEK ("vlek") certificate."""
    if kind not in ("vcek", "vlek"):
        raise ValueError(f"unknown endorsement key kind {kind!r}")
    struct_version = _small_integer(_required(certificate, OID_STRUCT_VERSION, "structVersion"),
                                    "structVersion extension")
    product_name = _ia5(_required(certificate, OID_PRODUCT_NAME, "productName"),
                        "productName extension")
    product = product_from_product_name(product_name)
    if product is None:
        raise EvidenceFormatError(f"{kind} productName {product_name!r} is not a known product")
    components = ("fmc", "bootloader", "tee", "snp", "microcode") if product == "Turin" \
        else ("bootloader", "tee", "snp", "microcode")
    tcb = {name: _small_integer(_required(certificate, _TCB_OIDS[name], f"{name} SPL"),
                                f"{name} SPL extension") for name in components}
    raw_hwid = _extension_bytes(certificate, OID_HWID)
    raw_csp = _extension_bytes(certificate, OID_CSP_ID)
    if kind == "vcek":
        if raw_hwid is None:
            raise EvidenceFormatError("vcek certificate lacks the hwID extension")
        if raw_csp is not None:
            raise EvidenceFormatError("vcek certificate carries a VLEK cspID extension")
        return EndorsementExtensions(struct_version, product_name, product, tcb,
                                     _hwid(raw_hwid, hwid_size(product)), None)
    if raw_csp is None:
        raise EvidenceFormatError("vlek certificate lacks the cspID extension")
    if raw_hwid is not None:
        raise EvidenceFormatError("vlek certificate carries a VCEK hwID extension")
    return EndorsementExtensions(struct_version, product_name, product, tcb, None,
                                 _ia5(raw_csp, "cspID extension"))


# --- writing (dev chain, tests) ---------------------------------------------------------
def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def der_integer(value: int) -> bytes:
    """DER INTEGER of a non-negative value (what KDS writes for SPLs and structVersion)."""
    if value < 0:
        raise ValueError("only non-negative integers are written")
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return bytes([_TAG_INTEGER]) + _der_length(len(body)) + body


def der_ia5_string(text: str) -> bytes:
    body = text.encode("ascii")
    return bytes([_TAG_IA5_STRING]) + _der_length(len(body)) + body


def der_octet_string(data: bytes) -> bytes:
    return bytes([_TAG_OCTET_STRING]) + _der_length(len(data)) + data
