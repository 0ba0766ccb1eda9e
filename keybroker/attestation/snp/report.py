"""Parse an SEV-SNP attestation report (1184 bytes) into a frozen dataclass, and write one.

What it does: checks the length, the version (2..5), every reserved range and reserved
bit, and decodes each field at its ABI offset (see `layout`). `encode_report` writes the
same format back, for the simulated attester and for tests. What it does not: any
cryptography; a parsed report is not yet trusted (see `verify`), and signatures are
checked over the original bytes (`SnpReport.raw`), never over a re-encoding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from keybroker.attestation.errors import EvidenceFormatError
from keybroker.attestation.snp import layout

__all__ = ["SnpReport", "decode_signature", "encode_report", "encode_signature", "parse_report"]


@dataclass(frozen=True)
class SnpReport:
    """Every field of ATTESTATION_REPORT; integers decoded little-endian, byte fields copied."""

    version: int = 2
    guest_svn: int = 0
    policy: int = 1 << layout.POLICY_RESERVED_ONE_BIT
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    vmpl: int = 0
    signature_algo: int = layout.SIGNATURE_ALGO_ECDSA_P384_SHA384
    current_tcb: int = 0
    platform_info: int = 0
    signer_info: int = 0
    report_data: bytes = bytes(64)
    measurement: bytes = bytes(48)
    host_data: bytes = bytes(32)
    id_key_digest: bytes = bytes(48)
    author_key_digest: bytes = bytes(48)
    report_id: bytes = bytes(32)
    report_id_ma: bytes = bytes(32)
    reported_tcb: int = 0
    cpuid_fam_id: int | None = None
    cpuid_mod_id: int | None = None
    cpuid_step: int | None = None
    chip_id: bytes = bytes(64)
    committed_tcb: int = 0
    current_build: int = 0
    current_minor: int = 0
    current_major: int = 0
    committed_build: int = 0
    committed_minor: int = 0
    committed_major: int = 0
    launch_tcb: int = 0
    launch_mit_vector: int | None = None
    current_mit_vector: int | None = None
    signature: bytes = bytes(512)
    raw: bytes = field(default=b"", repr=False, compare=False)

    # --- guest policy -------------------------------------------------------------
    def _policy_bit(self, bit: int) -> bool:
        return bool((self.policy >> bit) & 1)

    @property
    def debug(self) -> bool:
        """POLICY bit 19: the host may decrypt and inspect guest memory."""
        return self._policy_bit(layout.POLICY_DEBUG_BIT)

    @property
    def smt_allowed(self) -> bool:
        return self._policy_bit(layout.POLICY_SMT_BIT)

    @property
    def migrate_ma_allowed(self) -> bool:
        return self._policy_bit(layout.POLICY_MIGRATE_MA_BIT)

    @property
    def single_socket_required(self) -> bool:
        return self._policy_bit(layout.POLICY_SINGLE_SOCKET_BIT)

    @property
    def policy_flags(self) -> dict[str, object]:
        """The guest policy decoded, for claims."""
        return {
            "abi_minor": self.policy & 0xFF,
            "abi_major": (self.policy >> 8) & 0xFF,
            "smt_allowed": self.smt_allowed,
            "migrate_ma_allowed": self.migrate_ma_allowed,
            "debug_allowed": self.debug,
            "single_socket_required": self.single_socket_required,
            "cxl_allowed": self._policy_bit(layout.POLICY_CXL_ALLOW_BIT),
            "mem_aes_256_xts_required": self._policy_bit(layout.POLICY_MEM_AES_256_XTS_BIT),
            "rapl_disable_required": self._policy_bit(layout.POLICY_RAPL_DIS_BIT),
            "ciphertext_hiding_required": self._policy_bit(layout.POLICY_CIPHERTEXT_HIDING_BIT),
            "page_swap_disabled": self._policy_bit(layout.POLICY_PAGE_SWAP_DISABLE_BIT),
        }

    # --- platform info ------------------------------------------------------------
    @property
    def platform_flags(self) -> dict[str, bool]:
        """PLATFORM_INFO decoded; unknown bits stay visible in the raw value."""

        def bit(number: int) -> bool:
            return bool((self.platform_info >> number) & 1)

        return {
            "smt_enabled": bit(layout.PLATFORM_SMT_EN_BIT),
            "tsme_enabled": bit(layout.PLATFORM_TSME_EN_BIT),
            "ecc_enabled": bit(layout.PLATFORM_ECC_EN_BIT),
            "rapl_disabled": bit(layout.PLATFORM_RAPL_DIS_BIT),
            "ciphertext_hiding_enabled": bit(layout.PLATFORM_CIPHERTEXT_HIDING_EN_BIT),
            "alias_check_complete": bit(layout.PLATFORM_ALIAS_CHECK_COMPLETE_BIT),
        }

    # --- signer info --------------------------------------------------------------
    @property
    def signing_key(self) -> int:
        """0 = VCEK, 1 = VLEK, 7 = no signature."""
        shifted = self.signer_info >> layout.SIGNER_SIGNING_KEY_SHIFT
        return shifted & layout.SIGNER_SIGNING_KEY_MASK

    @property
    def signing_key_name(self) -> str:
        return layout.SIGNING_KEY_NAMES[self.signing_key]

    @property
    def mask_chip_key(self) -> bool:
        """The host masked CHIP_ID (all zeros), so it cannot be matched to a VCEK hwID."""
        return bool((self.signer_info >> layout.SIGNER_MASK_CHIP_KEY_BIT) & 1)

    @property
    def author_key_en(self) -> bool:
        return bool((self.signer_info >> layout.SIGNER_AUTHOR_KEY_EN_BIT) & 1)

    # --- signature ----------------------------------------------------------------
    @property
    def signed_bytes(self) -> bytes:
        """The exact bytes the AMD-SP signed: the original report, offsets 0..0x2A0."""
        if len(self.raw) != layout.REPORT_SIZE:
            raise EvidenceFormatError("report has no original bytes to verify (not parsed)")
        return self.raw[: layout.SIGNED_SIZE]


def _field(data: bytes, spec: tuple[int, int]) -> bytes:
    offset, size = spec
    return bytes(data[offset : offset + size])


def _u32(data: bytes, spec: tuple[int, int]) -> int:
    return struct.unpack_from("<I", data, spec[0])[0]


def _u64(data: bytes, spec: tuple[int, int]) -> int:
    return struct.unpack_from("<Q", data, spec[0])[0]


def _u8(data: bytes, spec: tuple[int, int]) -> int:
    return data[spec[0]]


def _require_zero(data: bytes, start: int, end: int, what: str) -> None:
    if any(data[start:end]):
        raise EvidenceFormatError(f"SEV-SNP report reserved bytes {what} [0x{start:X}, 0x{end:X}) "
                                  "must be zero")


def _check_policy(policy: int) -> None:
    if not (policy >> layout.POLICY_RESERVED_ONE_BIT) & 1:
        raise EvidenceFormatError("SEV-SNP report policy bit 17 is reserved and must be 1")
    if policy >> (layout.POLICY_HIGHEST_KNOWN_BIT + 1):
        raise EvidenceFormatError(
            f"SEV-SNP report policy 0x{policy:X} sets reserved bits above bit "
            f"{layout.POLICY_HIGHEST_KNOWN_BIT}")


def _check_signer_info(signer_info: int) -> None:
    if signer_info >> (layout.SIGNER_HIGHEST_KNOWN_BIT + 1):
        raise EvidenceFormatError(
            f"SEV-SNP report signer_info 0x{signer_info:X} sets reserved bits 5..31")
    key = (signer_info >> layout.SIGNER_SIGNING_KEY_SHIFT) & layout.SIGNER_SIGNING_KEY_MASK
    if key not in layout.SIGNING_KEY_NAMES:
        raise EvidenceFormatError(f"SEV-SNP report signing_key {key} is reserved (2..6)")


def parse_report(data: bytes) -> SnpReport:
    """Decode exactly one 1184-byte report; structural problems raise EvidenceFormatError."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EvidenceFormatError("SEV-SNP report must be bytes")
    data = bytes(data)
    if len(data) != layout.REPORT_SIZE:
        raise EvidenceFormatError(
            f"SEV-SNP report length is {len(data)} bytes, expected {layout.REPORT_SIZE}")
    version = _u32(data, layout.VERSION)
    if not layout.MIN_VERSION <= version <= layout.MAX_VERSION:
        raise EvidenceFormatError(
            f"SEV-SNP report version {version} is not supported "
            f"({layout.MIN_VERSION}..{layout.MAX_VERSION})")
    policy = _u64(data, layout.POLICY)
    _check_policy(policy)
    signer_info = _u32(data, layout.SIGNER_INFO)
    _check_signer_info(signer_info)
    _require_zero(data, layout.RESERVED_0[0], layout.RESERVED_0[0] + layout.RESERVED_0[1],
                  "after signer_info")
    has_cpuid = version >= layout.CPUID_MIN_VERSION
    after_tcb = layout.RESERVED_AFTER_CPUID_V3 if has_cpuid else layout.RESERVED_AFTER_TCB_V2
    _require_zero(data, *after_tcb, what="after reported_tcb")
    _require_zero(data, layout.RESERVED_1[0], layout.RESERVED_1[0] + 1, "after current_major")
    _require_zero(data, layout.RESERVED_2[0], layout.RESERVED_2[0] + 1, "after committed_major")
    has_mitigations = version >= layout.MITIGATION_MIN_VERSION
    tail = layout.RESERVED_TAIL_V5 if has_mitigations else layout.RESERVED_TAIL_V2
    _require_zero(data, *tail, what="before the signature")
    signature_algo = _u32(data, layout.SIGNATURE_ALGO)
    signature = _field(data, layout.SIGNATURE)
    if signature_algo == layout.SIGNATURE_ALGO_ECDSA_P384_SHA384:
        start = layout.SIGNATURE[0] + layout.ECDSA_SIGNATURE_USED
        _require_zero(data, start, layout.REPORT_SIZE, "after the ECDSA signature")
    return SnpReport(
        version=version,
        guest_svn=_u32(data, layout.GUEST_SVN),
        policy=policy,
        family_id=_field(data, layout.FAMILY_ID),
        image_id=_field(data, layout.IMAGE_ID),
        vmpl=_u32(data, layout.VMPL),
        signature_algo=signature_algo,
        current_tcb=_u64(data, layout.CURRENT_TCB),
        platform_info=_u64(data, layout.PLATFORM_INFO),
        signer_info=signer_info,
        report_data=_field(data, layout.REPORT_DATA),
        measurement=_field(data, layout.MEASUREMENT),
        host_data=_field(data, layout.HOST_DATA),
        id_key_digest=_field(data, layout.ID_KEY_DIGEST),
        author_key_digest=_field(data, layout.AUTHOR_KEY_DIGEST),
        report_id=_field(data, layout.REPORT_ID),
        report_id_ma=_field(data, layout.REPORT_ID_MA),
        reported_tcb=_u64(data, layout.REPORTED_TCB),
        cpuid_fam_id=_u8(data, layout.CPUID_FAM_ID) if has_cpuid else None,
        cpuid_mod_id=_u8(data, layout.CPUID_MOD_ID) if has_cpuid else None,
        cpuid_step=_u8(data, layout.CPUID_STEP) if has_cpuid else None,
        chip_id=_field(data, layout.CHIP_ID),
        committed_tcb=_u64(data, layout.COMMITTED_TCB),
        current_build=_u8(data, layout.CURRENT_BUILD),
        current_minor=_u8(data, layout.CURRENT_MINOR),
        current_major=_u8(data, layout.CURRENT_MAJOR),
        committed_build=_u8(data, layout.COMMITTED_BUILD),
        committed_minor=_u8(data, layout.COMMITTED_MINOR),
        committed_major=_u8(data, layout.COMMITTED_MAJOR),
        launch_tcb=_u64(data, layout.LAUNCH_TCB),
        launch_mit_vector=_u64(data, layout.LAUNCH_MIT_VECTOR) if has_mitigations else None,
        current_mit_vector=_u64(data, layout.CURRENT_MIT_VECTOR) if has_mitigations else None,
        signature=signature,
        raw=data,
    )


def decode_signature(signature: bytes) -> tuple[int, int]:
    """(R, S) from the AMD ECDSA P-384 signature struct: 72-byte little-endian integers."""
    if len(signature) != layout.SIGNATURE[1]:
        raise EvidenceFormatError(
            f"SEV-SNP signature field is {len(signature)} bytes, expected 512")
    size = layout.ECDSA_COMPONENT_SIZE
    r = int.from_bytes(signature[:size], "little")
    s = int.from_bytes(signature[size : 2 * size], "little")
    return r, s


def encode_signature(r: int, s: int) -> bytes:
    """The 512-byte AMD signature field for an ECDSA P-384 (R, S) pair."""
    size = layout.ECDSA_COMPONENT_SIZE
    for name, value in (("R", r), ("S", s)):
        if not 0 <= value < 1 << (8 * layout.ECDSA_P384_SIZE):
            raise ValueError(f"ECDSA P-384 {name} out of range")
    body = r.to_bytes(size, "little") + s.to_bytes(size, "little")
    return body + bytes(layout.SIGNATURE[1] - len(body))


def _put(buffer: bytearray, spec: tuple[int, int], value: bytes, name: str) -> None:
    offset, size = spec
    if len(value) != size:
        raise ValueError(f"report field {name} must be {size} bytes, got {len(value)}")
    buffer[offset : offset + size] = value


def encode_report(report: SnpReport) -> bytes:
    """The 1184-byte ABI encoding of `report` (reserved ranges zero); `raw` is ignored."""
    if not layout.MIN_VERSION <= report.version <= layout.MAX_VERSION:
        raise ValueError(f"report version {report.version} is not supported")
    out = bytearray(layout.REPORT_SIZE)
    struct.pack_into("<I", out, layout.VERSION[0], report.version)
    struct.pack_into("<I", out, layout.GUEST_SVN[0], report.guest_svn)
    struct.pack_into("<Q", out, layout.POLICY[0], report.policy)
    _put(out, layout.FAMILY_ID, report.family_id, "family_id")
    _put(out, layout.IMAGE_ID, report.image_id, "image_id")
    struct.pack_into("<I", out, layout.VMPL[0], report.vmpl)
    struct.pack_into("<I", out, layout.SIGNATURE_ALGO[0], report.signature_algo)
    struct.pack_into("<Q", out, layout.CURRENT_TCB[0], report.current_tcb)
    struct.pack_into("<Q", out, layout.PLATFORM_INFO[0], report.platform_info)
    struct.pack_into("<I", out, layout.SIGNER_INFO[0], report.signer_info)
    _put(out, layout.REPORT_DATA, report.report_data, "report_data")
    _put(out, layout.MEASUREMENT, report.measurement, "measurement")
    _put(out, layout.HOST_DATA, report.host_data, "host_data")
    _put(out, layout.ID_KEY_DIGEST, report.id_key_digest, "id_key_digest")
    _put(out, layout.AUTHOR_KEY_DIGEST, report.author_key_digest, "author_key_digest")
    _put(out, layout.REPORT_ID, report.report_id, "report_id")
    _put(out, layout.REPORT_ID_MA, report.report_id_ma, "report_id_ma")
    struct.pack_into("<Q", out, layout.REPORTED_TCB[0], report.reported_tcb)
    if report.version >= layout.CPUID_MIN_VERSION:
        struct.pack_into("<BBB", out, layout.CPUID_FAM_ID[0], report.cpuid_fam_id or 0,
                         report.cpuid_mod_id or 0, report.cpuid_step or 0)
    _put(out, layout.CHIP_ID, report.chip_id, "chip_id")
    struct.pack_into("<Q", out, layout.COMMITTED_TCB[0], report.committed_tcb)
    struct.pack_into("<BBB", out, layout.CURRENT_BUILD[0], report.current_build,
                     report.current_minor, report.current_major)
    struct.pack_into("<BBB", out, layout.COMMITTED_BUILD[0], report.committed_build,
                     report.committed_minor, report.committed_major)
    struct.pack_into("<Q", out, layout.LAUNCH_TCB[0], report.launch_tcb)
    if report.version >= layout.MITIGATION_MIN_VERSION:
        struct.pack_into("<Q", out, layout.LAUNCH_MIT_VECTOR[0], report.launch_mit_vector or 0)
        struct.pack_into("<Q", out, layout.CURRENT_MIT_VECTOR[0], report.current_mit_vector or 0)
    _put(out, layout.SIGNATURE, report.signature, "signature")
    return bytes(out)
