"""The wire format of Azure CVM evidence: HCL report + vTPM quote (+ TD quote on TDX).

What it does: encodes and decodes the one JSON document a worker on an Azure confidential VM
sends as its evidence, with a size limit checked before parsing and strict base64::

    {"format": "sealbeam-azure-cvm/1",
     "hcl_report":    base64(HCL report, vTPM NV index 0x01400001),
     "tpm_attest":    base64(marshalled TPMS_ATTEST of the vTPM quote),
     "tpm_signature": base64(marshalled TPMT_SIGNATURE, RSASSA or RSAPSS, SHA-256),
     "pcrs":          {"0": hex(SHA-256 PCR 0), ...}    (optional; checked against the quote)
     "td_quote":      base64(TDX DCAP quote)             (required for az-tdx, absent on SNP)}

It also imports the quote format of Microsoft's ``az-cvm-vtpm`` crate (bincode
``Quote {signature, message, pcrs}``, as trustee's Azure attesters send it), whose
signature is always RSASSA-SHA256. What it does not: verify anything (see `verify`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from keybroker.attestation.azure_cvm.hcl import MAX_HCL_REPORT_SIZE
from keybroker.attestation.azure_cvm.tpm import (
    MAX_ATTEST_SIZE,
    MAX_SIGNATURE_SIZE,
    TPM_ALG_SHA256,
    encode_signature,
    parse_quote_attest,
)
from keybroker.attestation.errors import EvidenceFormatError
from keybroker.attestation.json_bounded import load_bounded_object

__all__ = [
    "EVIDENCE_FORMAT",
    "MAX_EVIDENCE_SIZE",
    "AzureCvmEvidence",
    "decode_pcr_values",
    "encode_pcr_values",
    "evidence_from_az_cvm_vtpm",
    "parse_azure_cvm_evidence",
]

EVIDENCE_FORMAT = "sealbeam-azure-cvm/1"
MAX_TD_QUOTE_SIZE = 64 * 1024
MAX_EVIDENCE_SIZE = 128 * 1024
MAX_JSON_DEPTH = 8
MAX_PCRS = 24
_FIELDS = {"format", "hcl_report", "tpm_attest", "tpm_signature", "pcrs", "td_quote"}
_PCR_INDEX = re.compile(r"^(?:0|[1-9][0-9]?)$")


@dataclass(frozen=True)
class AzureCvmEvidence:
    """The pieces of Azure CVM evidence, as bytes."""

    hcl_report: bytes
    tpm_attest: bytes
    tpm_signature: bytes
    pcrs: Mapping[int, bytes] = field(default_factory=dict)
    td_quote: bytes | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pcrs", MappingProxyType(dict(self.pcrs)))

    def to_bytes(self) -> bytes:
        """The canonical JSON document (sorted keys, no spaces)."""
        document: dict[str, Any] = {
            "format": EVIDENCE_FORMAT,
            "hcl_report": _b64(self.hcl_report),
            "tpm_attest": _b64(self.tpm_attest),
            "tpm_signature": _b64(self.tpm_signature),
        }
        if self.pcrs:
            document["pcrs"] = encode_pcr_values(self.pcrs)
        if self.td_quote is not None:
            document["td_quote"] = _b64(self.td_quote)
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, what: str, limit: int) -> bytes:
    if not isinstance(value, str):
        raise EvidenceFormatError(f"Azure CVM evidence: {what} must be a base64 string")
    if len(value) > 4 * (limit // 3 + 1):
        raise EvidenceFormatError(f"Azure CVM evidence: {what} is over its {limit}-byte limit")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EvidenceFormatError(f"Azure CVM evidence: {what} is not valid base64") from None
    if not data:
        raise EvidenceFormatError(f"Azure CVM evidence: {what} is empty")
    return data


def encode_pcr_values(pcrs: Mapping[int, bytes]) -> dict[str, str]:
    """PCR index -> value as the JSON object ``{"<index>": "<hex>"}``."""
    return {str(index): bytes(value).hex() for index, value in sorted(pcrs.items())}


def decode_pcr_values(value: object, what: str) -> dict[int, bytes]:
    """Parse ``{"<index>": "<hex of 32 bytes>"}`` (SHA-256 PCRs 0..23)."""
    if not isinstance(value, dict) or len(value) > MAX_PCRS:
        raise EvidenceFormatError(f"{what} must be an object of at most {MAX_PCRS} PCRs")
    pcrs: dict[int, bytes] = {}
    for key, digest in value.items():
        if not isinstance(key, str) or not _PCR_INDEX.match(key) or int(key) >= MAX_PCRS:
            raise EvidenceFormatError(f"{what}: PCR index {key!r} is not 0..{MAX_PCRS - 1}")
        if not isinstance(digest, str) or len(digest) != 64:
            raise EvidenceFormatError(f"{what}: PCR {key} must be 64 hex characters")
        try:
            pcrs[int(key)] = bytes.fromhex(digest)
        except ValueError:
            raise EvidenceFormatError(f"{what}: PCR {key} is not hex") from None
    return pcrs


def parse_azure_cvm_evidence(data: bytes) -> AzureCvmEvidence:
    """Decode the evidence document; EvidenceFormatError names what is wrong."""
    if not isinstance(data, bytes | bytearray):
        raise EvidenceFormatError("Azure CVM evidence must be bytes")
    document = load_bounded_object(
        data, what="Azure CVM evidence", max_bytes=MAX_EVIDENCE_SIZE, max_depth=MAX_JSON_DEPTH,
        error=EvidenceFormatError)
    unknown = set(document) - _FIELDS
    if unknown:
        raise EvidenceFormatError(f"Azure CVM evidence has unknown fields {sorted(unknown)}")
    if document.get("format") != EVIDENCE_FORMAT:
        raise EvidenceFormatError(f"Azure CVM evidence format is not {EVIDENCE_FORMAT!r}")
    td_quote = document.get("td_quote")
    return AzureCvmEvidence(
        hcl_report=_unb64(document.get("hcl_report"), "hcl_report", MAX_HCL_REPORT_SIZE),
        tpm_attest=_unb64(document.get("tpm_attest"), "tpm_attest", MAX_ATTEST_SIZE),
        tpm_signature=_unb64(document.get("tpm_signature"), "tpm_signature",
                             MAX_SIGNATURE_SIZE + 6),
        pcrs=decode_pcr_values(document.get("pcrs", {}), "Azure CVM evidence pcrs"),
        td_quote=None if td_quote is None else _unb64(td_quote, "td_quote", MAX_TD_QUOTE_SIZE),
    )


# --- interop: az-cvm-vtpm's bincode Quote ---------------------------------------------
class _BincodeReader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._offset

    def length(self, what: str, limit: int) -> int:
        if self.remaining < 8:
            raise EvidenceFormatError(f"az-cvm-vtpm quote: {what} length is truncated")
        value = struct.unpack_from("<Q", self._data, self._offset)[0]
        self._offset += 8
        if value > limit:
            raise EvidenceFormatError(f"az-cvm-vtpm quote: {what} length {value} is over {limit}")
        return value

    def take(self, size: int, what: str) -> bytes:
        if size > self.remaining:
            raise EvidenceFormatError(f"az-cvm-vtpm quote: {what} needs {size} bytes, "
                                      f"{self.remaining} remain")
        start = self._offset
        self._offset += size
        return self._data[start:self._offset]


def evidence_from_az_cvm_vtpm(hcl_report: bytes, quote: bytes,
                              td_quote: bytes | None = None) -> AzureCvmEvidence:
    """Evidence from an HCL report and an ``az-cvm-vtpm`` bincode quote.

    The quote's PCR list is in the order of its SHA-256 selection; both the older
    ``Vec<[u8; 32]>`` and the newer ``Vec<Vec<u8>>`` encodings are read.
    """
    if len(quote) > MAX_ATTEST_SIZE + MAX_SIGNATURE_SIZE + 2048:
        raise EvidenceFormatError("az-cvm-vtpm quote is over its size limit")
    reader = _BincodeReader(bytes(quote))
    signature = reader.take(reader.length("signature", MAX_SIGNATURE_SIZE), "signature")
    message = reader.take(reader.length("message", MAX_ATTEST_SIZE), "message")
    count = reader.length("pcrs", MAX_PCRS)
    if reader.remaining == count * 32:
        values = [reader.take(32, f"PCR {index}") for index in range(count)]
    elif reader.remaining == count * 40:
        values = []
        for index in range(count):
            if reader.length(f"PCR {index}", 32) != 32:
                raise EvidenceFormatError(f"az-cvm-vtpm quote: PCR {index} is not 32 bytes")
            values.append(reader.take(32, f"PCR {index}"))
    else:
        raise EvidenceFormatError(
            f"az-cvm-vtpm quote: {reader.remaining} bytes do not hold {count} SHA-256 PCRs")
    selected = parse_quote_attest(message).selected_pcrs(TPM_ALG_SHA256)
    if len(selected) != count:
        raise EvidenceFormatError(
            f"az-cvm-vtpm quote: {count} PCR values for {len(selected)} selected PCRs")
    return AzureCvmEvidence(
        hcl_report=bytes(hcl_report),
        tpm_attest=message,
        tpm_signature=encode_signature(signature),
        pcrs=dict(zip(selected, values, strict=True)),
        td_quote=td_quote,
    )
