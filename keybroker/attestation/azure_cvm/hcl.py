"""Parse the Azure confidential VM's HCL report (vTPM NV index 0x01400001), and write one.

What it does: reads the report that Azure's paravisor (the HCL) puts in the vTPM: a 32-byte
"HCLA" header, the 1184-byte hardware report slot (an SEV-SNP report, or a 1024-byte TDX
TDREPORT followed by zeros), the IGVM request-data header, and the runtime data: a JSON
document with the vTPM attestation key (JWK ``HCLAkPub``), the VM configuration and
``user-data`` (the hex of the 64 bytes the guest last wrote to NV index 0x01400002). Every
length is checked against the bytes that remain before slicing; reserved fields and padding
must be zero. ``encode_hcl_report`` writes the same layout (for the simulated attester and
tests). Layout as in Microsoft's ``az-cvm-vtpm`` crate (``src/hcl/mod.rs``).

What it does not: any cryptography. The runtime data is trusted only once the hardware
report that hashes it has verified (see `verify`), and only the original bytes are hashed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from keybroker.attestation.errors import EvidenceFormatError
from keybroker.attestation.json_bounded import load_bounded_object

__all__ = [
    "AK_KEY_ID",
    "HASH_TYPES",
    "HCL_HEADER_SIZE",
    "HCL_SIGNATURE",
    "HW_REPORT_SIZE",
    "MAX_HCL_REPORT_SIZE",
    "MAX_RUNTIME_DATA_SIZE",
    "REPORT_TYPE_SNP",
    "REPORT_TYPE_TDX",
    "TD_REPORT_SIZE",
    "HclReport",
    "RuntimeData",
    "encode_hcl_report",
    "parse_hcl_report",
    "parse_runtime_data",
    "rsa_key_from_jwk",
]

HCL_SIGNATURE = b"HCLA"
HCL_HEADER_SIZE = 32
HW_REPORT_SIZE = 1184  # the slot holds an SNP report; a TDREPORT uses its first 1024 bytes
TD_REPORT_SIZE = 1024
REQUEST_DATA_HEADER_SIZE = 20
HW_REPORT_OFFSET = HCL_HEADER_SIZE
REQUEST_DATA_OFFSET = HCL_HEADER_SIZE + HW_REPORT_SIZE
RUNTIME_DATA_OFFSET = REQUEST_DATA_OFFSET + REQUEST_DATA_HEADER_SIZE

MAX_HCL_REPORT_SIZE = 16 * 1024  # the NV index holds 2600 bytes
MAX_RUNTIME_DATA_SIZE = 8 * 1024
MAX_RUNTIME_KEYS = 16
MAX_JSON_DEPTH = 8
SUPPORTED_HEADER_VERSIONS = (1, 2)
SUPPORTED_REQUEST_DATA_VERSION = 1

REPORT_TYPE_SNP = 2
REPORT_TYPE_TDX = 4
_HARDWARE_FOR_TYPE = {REPORT_TYPE_SNP: "sev-snp", REPORT_TYPE_TDX: "tdx"}
HASH_TYPES: Mapping[int, str] = MappingProxyType({1: "sha256", 2: "sha384", 3: "sha512"})

AK_KEY_ID = "HCLAkPub"
USER_DATA_SIZE = 64
MIN_AK_BITS = 2048
MAX_AK_BITS = 4096


@dataclass(frozen=True)
class RuntimeData:
    """The runtime-data JSON, decoded: the AK public key and what else the HCL put there."""

    ak_public_key: rsa.RSAPublicKey
    user_data: bytes | None
    vm_configuration: Mapping[str, object]
    key_ids: tuple[str, ...]


@dataclass(frozen=True)
class HclReport:
    """A parsed HCL report; ``runtime_data_bytes`` are the exact bytes the hardware hashed."""

    header_version: int
    report_size: int
    request_type: int
    report_type: int
    hash_type: int
    hardware_report: bytes  # 1184 bytes (SNP) or 1024 bytes (TDX TDREPORT)
    runtime_data_bytes: bytes
    runtime_data: RuntimeData
    raw: bytes = field(default=b"", repr=False, compare=False)

    @property
    def hardware(self) -> str:
        """"sev-snp" or "tdx": which hardware report the HCL embedded."""
        return _HARDWARE_FOR_TYPE[self.report_type]

    @property
    def hash_name(self) -> str:
        return HASH_TYPES[self.hash_type]

    def runtime_data_digest(self) -> bytes:
        """The digest the hardware report's report_data starts with."""
        return hashlib.new(self.hash_name, self.runtime_data_bytes).digest()


def _u32(data: bytes, offset: int) -> int:
    return struct.unpack_from("<I", data, offset)[0]


def _require_zero(data: bytes, what: str) -> None:
    if any(data):
        raise EvidenceFormatError(f"HCL report: {what} must be zero")


def parse_hcl_report(data: bytes) -> HclReport:
    """Parse and check the structure; raises EvidenceFormatError naming the bad field."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EvidenceFormatError("HCL report must be bytes")
    data = bytes(data)
    if len(data) > MAX_HCL_REPORT_SIZE:
        raise EvidenceFormatError(
            f"HCL report is {len(data)} bytes, over the {MAX_HCL_REPORT_SIZE}-byte limit")
    if len(data) < RUNTIME_DATA_OFFSET:
        raise EvidenceFormatError(
            f"HCL report is {len(data)} bytes, shorter than its {RUNTIME_DATA_OFFSET}-byte "
            "fixed part (header, hardware report, request data)")
    if data[:4] != HCL_SIGNATURE:
        raise EvidenceFormatError("HCL report: signature is not 'HCLA'")
    header_version = _u32(data, 4)
    if header_version not in SUPPORTED_HEADER_VERSIONS:
        raise EvidenceFormatError(
            f"HCL report: header version {header_version} is not one of "
            f"{SUPPORTED_HEADER_VERSIONS}")
    report_size = _u32(data, 8)
    request_type = _u32(data, 12)
    status = _u32(data, 16)
    if status != 0:
        raise EvidenceFormatError(f"HCL report: status is {status:#x}, not 0 (success)")
    _require_zero(data[20:HCL_HEADER_SIZE], "header reserved bytes")

    data_size = _u32(data, REQUEST_DATA_OFFSET)
    request_data_version = _u32(data, REQUEST_DATA_OFFSET + 4)
    report_type = _u32(data, REQUEST_DATA_OFFSET + 8)
    hash_type = _u32(data, REQUEST_DATA_OFFSET + 12)
    runtime_size = _u32(data, REQUEST_DATA_OFFSET + 16)
    if request_data_version != SUPPORTED_REQUEST_DATA_VERSION:
        raise EvidenceFormatError(
            f"HCL report: request data version {request_data_version} is not 1")
    if report_type not in _HARDWARE_FOR_TYPE:
        raise EvidenceFormatError(
            f"HCL report: report type {report_type} is neither 2 (SEV-SNP) nor 4 (TDX)")
    if hash_type not in HASH_TYPES:
        raise EvidenceFormatError(
            f"HCL report: report_data hash type {hash_type} is not 1, 2 or 3 (SHA-256/384/512)")
    if runtime_size > MAX_RUNTIME_DATA_SIZE:
        raise EvidenceFormatError(
            f"HCL report: runtime data size {runtime_size} is over the "
            f"{MAX_RUNTIME_DATA_SIZE}-byte limit")
    if data_size != REQUEST_DATA_HEADER_SIZE + runtime_size:
        raise EvidenceFormatError(
            f"HCL report: request data size {data_size} is not {REQUEST_DATA_HEADER_SIZE} + "
            f"runtime data size {runtime_size}")
    if report_size != REQUEST_DATA_OFFSET + data_size:
        raise EvidenceFormatError(
            f"HCL report: report size {report_size} does not equal header + hardware report + "
            f"request data ({REQUEST_DATA_OFFSET + data_size})")
    if report_size > len(data):
        raise EvidenceFormatError(
            f"HCL report: report size {report_size} is more than the {len(data)} bytes given")
    _require_zero(data[report_size:], "padding after the report")

    slot = data[HW_REPORT_OFFSET:REQUEST_DATA_OFFSET]
    if report_type == REPORT_TYPE_TDX:
        _require_zero(slot[TD_REPORT_SIZE:], "hardware report slot after the TDREPORT")
        hardware_report = slot[:TD_REPORT_SIZE]
    else:
        hardware_report = slot
    runtime_bytes = data[RUNTIME_DATA_OFFSET:RUNTIME_DATA_OFFSET + runtime_size]
    return HclReport(
        header_version=header_version,
        report_size=report_size,
        request_type=request_type,
        report_type=report_type,
        hash_type=hash_type,
        hardware_report=hardware_report,
        runtime_data_bytes=runtime_bytes,
        runtime_data=parse_runtime_data(runtime_bytes),
        raw=data,
    )


# --- runtime data (JSON) -------------------------------------------------------------
def _b64url_uint(value: object, what: str) -> int:
    if not isinstance(value, str) or not value or len(value) > 1024:
        raise EvidenceFormatError(f"HCL runtime data: {what} must be a base64url string")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise EvidenceFormatError(f"HCL runtime data: {what} is not base64url") from None
    return int.from_bytes(raw, "big")


def rsa_key_from_jwk(jwk: Mapping[str, object], what: str) -> rsa.RSAPublicKey:
    """An RSA public key from a JWK's ``n`` and ``e``, with size bounds."""
    if jwk.get("kty") != "RSA":
        raise EvidenceFormatError(f"{what}: kty must be 'RSA'")
    modulus = _b64url_uint(jwk.get("n"), f"{what} n")
    exponent = _b64url_uint(jwk.get("e"), f"{what} e")
    bits = modulus.bit_length()
    if not MIN_AK_BITS <= bits <= MAX_AK_BITS:
        raise EvidenceFormatError(f"{what}: RSA modulus of {bits} bits is outside "
                                  f"{MIN_AK_BITS}..{MAX_AK_BITS}")
    if exponent < 3 or exponent % 2 == 0 or exponent.bit_length() > 32:
        raise EvidenceFormatError(f"{what}: RSA public exponent is not usable")
    try:
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    except ValueError:
        raise EvidenceFormatError(f"{what}: not a valid RSA public key") from None


def _user_data(document: Mapping[str, Any]) -> bytes | None:
    value = document.get("user-data")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 2 * USER_DATA_SIZE:
        raise EvidenceFormatError(
            f"HCL runtime data: user-data must be {2 * USER_DATA_SIZE} hex characters")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise EvidenceFormatError("HCL runtime data: user-data is not hex") from None


def parse_runtime_data(data: bytes) -> RuntimeData:
    """Decode the runtime-data JSON: ``keys`` (with ``HCLAkPub``), ``vm-configuration``,
    ``user-data``."""
    document = load_bounded_object(
        data, what="HCL runtime data", max_bytes=MAX_RUNTIME_DATA_SIZE,
        max_depth=MAX_JSON_DEPTH, error=EvidenceFormatError)
    keys = document.get("keys")
    if not isinstance(keys, list) or not keys or len(keys) > MAX_RUNTIME_KEYS:
        raise EvidenceFormatError(
            f"HCL runtime data: keys must be a list of 1..{MAX_RUNTIME_KEYS} JWKs")
    key_ids: list[str] = []
    ak_jwk: Mapping[str, object] | None = None
    for index, jwk in enumerate(keys):
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
            raise EvidenceFormatError(f"HCL runtime data: keys[{index}] is not a JWK with a kid")
        key_ids.append(jwk["kid"])
        if jwk["kid"] == AK_KEY_ID:
            if ak_jwk is not None:
                raise EvidenceFormatError(f"HCL runtime data: more than one {AK_KEY_ID} key")
            ak_jwk = jwk
    if ak_jwk is None:
        raise EvidenceFormatError(f"HCL runtime data has no {AK_KEY_ID} key")
    configuration = document.get("vm-configuration", {})
    if not isinstance(configuration, dict):
        raise EvidenceFormatError("HCL runtime data: vm-configuration must be an object")
    return RuntimeData(
        ak_public_key=rsa_key_from_jwk(ak_jwk, f"HCL runtime data {AK_KEY_ID}"),
        user_data=_user_data(document),
        vm_configuration=MappingProxyType(dict(configuration)),
        key_ids=tuple(key_ids),
    )


# --- writing (simulated attester, tests) ---------------------------------------------
def encode_hcl_report(hardware_report: bytes, runtime_data: bytes, *,
                      report_type: int = REPORT_TYPE_SNP, hash_type: int = 1,
                      header_version: int = 1, request_type: int = 2,
                      total_size: int = 2600) -> bytes:
    """An HCL report in Azure's layout, zero-padded to ``total_size`` (the NV index size)."""
    if report_type == REPORT_TYPE_TDX:
        if len(hardware_report) != TD_REPORT_SIZE:
            raise ValueError(f"a TDREPORT is {TD_REPORT_SIZE} bytes")
        slot = hardware_report + bytes(HW_REPORT_SIZE - TD_REPORT_SIZE)
    else:
        if len(hardware_report) != HW_REPORT_SIZE:
            raise ValueError(f"an SEV-SNP report is {HW_REPORT_SIZE} bytes")
        slot = hardware_report
    data_size = REQUEST_DATA_HEADER_SIZE + len(runtime_data)
    report_size = REQUEST_DATA_OFFSET + data_size
    header = HCL_SIGNATURE + struct.pack("<IIII", header_version, report_size, request_type, 0)
    header += bytes(HCL_HEADER_SIZE - len(header))
    request = struct.pack("<IIIII", data_size, SUPPORTED_REQUEST_DATA_VERSION, report_type,
                          hash_type, len(runtime_data))
    body = header + slot + request + runtime_data
    return body + bytes(max(0, total_size - len(body)))
