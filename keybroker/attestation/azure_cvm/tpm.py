"""TPM 2.0 quotes: parse TPMS_ATTEST and TPMT_SIGNATURE, check the signature and PCR digest.

What it does: decodes a marshalled ``TPMS_ATTEST`` of type ``TPM_ST_ATTEST_QUOTE`` (magic,
qualified signer, extraData, clock info, firmware version, PCR selection, PCR digest) and a
``TPMT_SIGNATURE`` (RSASSA or RSAPSS with SHA-256), big-endian as the TPM marshals them,
checking each TPM2B size against its spec maximum and the bytes that remain. Then, one
function per check: the quote is signed by the attestation key, and the PCR values given
hash to the quote's PCR digest. ``encode_*`` write the same formats (tests, simulation).
Layouts: TCG TPM 2.0 Library, Part 2 (Structures), 10.12 and 11.3.

What it does not: decide which key may sign (the AK comes from verified HCL runtime data)
or which PCR values are good (policy).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from keybroker.attestation.errors import EvidenceFormatError, EvidenceVerificationError

__all__ = [
    "MAX_ATTEST_SIZE",
    "MAX_SIGNATURE_SIZE",
    "TPM_ALG_RSAPSS",
    "TPM_ALG_RSASSA",
    "TPM_ALG_SHA256",
    "PcrSelection",
    "TpmQuote",
    "TpmSignature",
    "check_pcr_digest",
    "encode_pcr_selection",
    "encode_quote_attest",
    "encode_signature",
    "parse_quote_attest",
    "parse_signature",
    "pcr_digest",
    "verify_quote_signature",
]

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ALG_SHA1 = 0x0004
TPM_ALG_SHA256 = 0x000B
TPM_ALG_SHA384 = 0x000C
TPM_ALG_SHA512 = 0x000D
TPM_ALG_RSASSA = 0x0014
TPM_ALG_RSAPSS = 0x0016
_DIGEST_SIZES = {TPM_ALG_SHA1: 20, TPM_ALG_SHA256: 32, TPM_ALG_SHA384: 48, TPM_ALG_SHA512: 64}
_SCHEMES = {TPM_ALG_RSASSA: "rsassa", TPM_ALG_RSAPSS: "rsapss"}

MAX_ATTEST_SIZE = 1024  # TPM2B_ATTEST; a quote is ~130 bytes
MAX_NAME_SIZE = 2 + 64  # TPMU_NAME: a TPMT_HA with the largest digest
MAX_DATA_SIZE = 64  # TPM2B_DATA (qualifying data) on TPMs with SHA-512; SHA-256 TPMs: 34
MAX_DIGEST_SIZE = 64
MAX_PCR_BANKS = 16  # HASH_COUNT upper bound
MAX_SIZEOF_SELECT = 4  # 32 PCRs
MAX_SIGNATURE_SIZE = 512  # RSA-4096
PCR_COUNT_LIMIT = 8 * MAX_SIZEOF_SELECT


@dataclass(frozen=True)
class PcrSelection:
    """One bank of a TPML_PCR_SELECTION: hash algorithm and the selected PCR indices."""

    hash_alg: int
    indices: tuple[int, ...]
    sizeof_select: int = 3


@dataclass(frozen=True)
class TpmQuote:
    """A parsed TPMS_ATTEST of type quote; ``raw`` is what the attestation key signed."""

    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    pcr_selections: tuple[PcrSelection, ...]
    pcr_digest: bytes
    raw: bytes

    def selected_pcrs(self, hash_alg: int = TPM_ALG_SHA256) -> tuple[int, ...]:
        """Indices selected in the given bank, ascending (the order the digest uses)."""
        indices: list[int] = []
        for selection in self.pcr_selections:
            if selection.hash_alg == hash_alg:
                indices.extend(selection.indices)
        return tuple(indices)


@dataclass(frozen=True)
class TpmSignature:
    """A TPMT_SIGNATURE over an RSA key: scheme, hash algorithm, signature bytes."""

    scheme: int
    hash_alg: int
    signature: bytes

    @property
    def scheme_name(self) -> str:
        return _SCHEMES[self.scheme]


class _Reader:
    """Big-endian sequential reader that names the field it could not read."""

    def __init__(self, data: bytes, where: str) -> None:
        self._data = data
        self._offset = 0
        self._where = where

    def take(self, size: int, what: str) -> bytes:
        remaining = len(self._data) - self._offset
        if size > remaining:
            raise EvidenceFormatError(
                f"{self._where}: {what} needs {size} bytes but only {remaining} remain")
        start = self._offset
        self._offset += size
        return self._data[start:self._offset]

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def sized(self, limit: int, what: str) -> bytes:
        size = self.uint(2, f"{what} size")
        if size > limit:
            raise EvidenceFormatError(f"{self._where}: {what} size {size} is over its "
                                      f"maximum {limit}")
        return self.take(size, what)

    def expect_end(self) -> None:
        remaining = len(self._data) - self._offset
        if remaining:
            raise EvidenceFormatError(f"{self._where}: {remaining} bytes after the last field")


def _parse_selection(reader: _Reader) -> tuple[PcrSelection, ...]:
    count = reader.uint(4, "PCR selection count")
    if count > MAX_PCR_BANKS:
        raise EvidenceFormatError(f"TPM quote: {count} PCR banks, over the {MAX_PCR_BANKS} limit")
    selections = []
    for bank in range(count):
        hash_alg = reader.uint(2, f"PCR bank {bank} hash")
        if hash_alg not in _DIGEST_SIZES:
            raise EvidenceFormatError(f"TPM quote: PCR bank {bank} hash {hash_alg:#06x} is not "
                                      "SHA-1/256/384/512")
        size = reader.uint(1, f"PCR bank {bank} sizeofSelect")
        if size > MAX_SIZEOF_SELECT:
            raise EvidenceFormatError(
                f"TPM quote: PCR bank {bank} sizeofSelect {size} is over {MAX_SIZEOF_SELECT}")
        bitmap = reader.take(size, f"PCR bank {bank} bitmap")
        indices = tuple(8 * octet + bit for octet, value in enumerate(bitmap)
                        for bit in range(8) if value >> bit & 1)
        selections.append(PcrSelection(hash_alg, indices, size))
    return tuple(selections)


def parse_quote_attest(data: bytes) -> TpmQuote:
    """Parse a marshalled TPMS_ATTEST that must be a quote; EvidenceFormatError otherwise."""
    if not isinstance(data, bytes | bytearray):
        raise EvidenceFormatError("TPM quote must be bytes")
    data = bytes(data)
    if len(data) > MAX_ATTEST_SIZE:
        raise EvidenceFormatError(
            f"TPM quote is {len(data)} bytes, over the {MAX_ATTEST_SIZE}-byte limit")
    reader = _Reader(data, "TPM quote")
    if reader.uint(4, "magic") != TPM_GENERATED_VALUE:
        raise EvidenceFormatError("TPM quote: magic is not TPM_GENERATED_VALUE (0xff544347)")
    attest_type = reader.uint(2, "type")
    if attest_type != TPM_ST_ATTEST_QUOTE:
        raise EvidenceFormatError(
            f"TPM quote: type {attest_type:#06x} is not TPM_ST_ATTEST_QUOTE (0x8018)")
    signer = reader.sized(MAX_NAME_SIZE, "qualifiedSigner")
    extra = reader.sized(MAX_DATA_SIZE, "extraData")
    clock = reader.uint(8, "clock")
    reset_count = reader.uint(4, "resetCount")
    restart_count = reader.uint(4, "restartCount")
    safe = reader.uint(1, "safe")
    if safe > 1:
        raise EvidenceFormatError(f"TPM quote: safe is {safe}, not 0 or 1")
    firmware = reader.uint(8, "firmwareVersion")
    selections = _parse_selection(reader)
    digest = reader.sized(MAX_DIGEST_SIZE, "pcrDigest")
    reader.expect_end()
    return TpmQuote(signer, extra, clock, reset_count, restart_count, bool(safe), firmware,
                    selections, digest, data)


def parse_signature(data: bytes) -> TpmSignature:
    """Parse a TPMT_SIGNATURE; only RSASSA and RSAPSS with SHA-256 are accepted."""
    if not isinstance(data, bytes | bytearray):
        raise EvidenceFormatError("TPM signature must be bytes")
    data = bytes(data)
    if len(data) > 6 + MAX_SIGNATURE_SIZE:
        raise EvidenceFormatError("TPM signature is over its size limit")
    reader = _Reader(data, "TPM signature")
    scheme = reader.uint(2, "sigAlg")
    if scheme not in _SCHEMES:
        raise EvidenceFormatError(
            f"TPM signature: sigAlg {scheme:#06x} is not RSASSA (0x0014) or RSAPSS (0x0016)")
    hash_alg = reader.uint(2, "hash")
    if hash_alg != TPM_ALG_SHA256:
        raise EvidenceFormatError(f"TPM signature: hash {hash_alg:#06x} is not SHA-256 (0x000b)")
    signature = reader.sized(MAX_SIGNATURE_SIZE, "signature")
    reader.expect_end()
    if not signature:
        raise EvidenceFormatError("TPM signature: signature is empty")
    return TpmSignature(scheme, hash_alg, signature)


# --- checks -------------------------------------------------------------------------
def verify_quote_signature(quote: TpmQuote, signature: TpmSignature,
                           key: rsa.RSAPublicKey) -> None:
    """The attestation key signed the TPMS_ATTEST bytes (RSASSA-PKCS1-v1_5 or RSA-PSS)."""
    if len(signature.signature) != (key.key_size + 7) // 8:
        raise EvidenceVerificationError(
            f"TPM quote signature is {len(signature.signature)} bytes, not the AK's "
            f"{(key.key_size + 7) // 8}")
    if signature.scheme == TPM_ALG_RSASSA:
        scheme: padding.AsymmetricPadding = padding.PKCS1v15()
    else:
        scheme = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
    try:
        key.verify(signature.signature, quote.raw, scheme, hashes.SHA256())
    except InvalidSignature:
        raise EvidenceVerificationError(
            "TPM quote signature does not verify under the vTPM attestation key") from None


def pcr_digest(values: Sequence[bytes]) -> bytes:
    """SHA-256 over the PCR values concatenated in selection order."""
    return hashlib.sha256(b"".join(values)).digest()


def check_pcr_digest(quote: TpmQuote, pcrs: Mapping[int, bytes]) -> dict[int, bytes]:
    """The given SHA-256 PCR values cover the quote's selection and hash to its pcrDigest.

    Returns the selected PCRs (index -> value). Only a SHA-256 selection can be checked.
    """
    other_banks = [s for s in quote.pcr_selections if s.hash_alg != TPM_ALG_SHA256 and s.indices]
    if other_banks:
        raise EvidenceVerificationError(
            "TPM quote selects PCRs outside the SHA-256 bank; their values cannot be checked")
    selected = quote.selected_pcrs(TPM_ALG_SHA256)
    missing = [index for index in selected if index not in pcrs]
    if missing:
        raise EvidenceVerificationError(f"PCR values missing for selected PCRs {missing}")
    extra = sorted(set(pcrs) - set(selected))
    if extra:
        raise EvidenceVerificationError(f"PCR values given for PCRs {extra} the quote did "
                                        "not select")
    values = [pcrs[index] for index in selected]
    if any(len(value) != 32 for value in values):
        raise EvidenceFormatError("every SHA-256 PCR value must be 32 bytes")
    if len(quote.pcr_digest) != 32 or pcr_digest(values) != quote.pcr_digest:
        raise EvidenceVerificationError("PCR values do not hash to the quote's pcrDigest")
    return {index: pcrs[index] for index in selected}


# --- writing (tests, simulation) ------------------------------------------------------
def encode_pcr_selection(selections: Sequence[PcrSelection]) -> bytes:
    """TPML_PCR_SELECTION for the given banks."""
    out = struct.pack(">I", len(selections))
    for selection in selections:
        bitmap = bytearray(selection.sizeof_select)
        for index in selection.indices:
            bitmap[index // 8] |= 1 << (index % 8)
        out += struct.pack(">HB", selection.hash_alg, selection.sizeof_select) + bytes(bitmap)
    return out


def encode_quote_attest(*, extra_data: bytes, pcr_values: Sequence[bytes],
                        pcr_indices: Sequence[int] = tuple(range(24)),
                        qualified_signer: bytes = b"\x00\x0b" + bytes(32),
                        clock: int = 0x211111, reset_count: int = 3, restart_count: int = 0,
                        firmware_version: int = 0x2020031200120003) -> bytes:
    """A marshalled TPMS_ATTEST quote over SHA-256 PCRs ``pcr_indices`` with these values."""
    selection = encode_pcr_selection([PcrSelection(TPM_ALG_SHA256, tuple(pcr_indices))])
    digest = pcr_digest(pcr_values)
    return (struct.pack(">IH", TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE)
            + struct.pack(">H", len(qualified_signer)) + qualified_signer
            + struct.pack(">H", len(extra_data)) + extra_data
            + struct.pack(">QIIB", clock, reset_count, restart_count, 1)
            + struct.pack(">Q", firmware_version)
            + selection + struct.pack(">H", len(digest)) + digest)


def encode_signature(signature: bytes, *, scheme: int = TPM_ALG_RSASSA,
                     hash_alg: int = TPM_ALG_SHA256) -> bytes:
    """A TPMT_SIGNATURE for an RSA signature."""
    return struct.pack(">HHH", scheme, hash_alg, len(signature)) + signature
