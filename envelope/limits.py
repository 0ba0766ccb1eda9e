"""Every bound of envelope format v1, in one place (docs/FORMAT.md lists the same numbers).

Parsers check a claimed length against these bounds *before* they slice or allocate, and
sealers refuse values outside them, so anything sealed can be opened. This module holds
numbers only; the checks live in ``envelope._wire`` and the parsers.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "ENVELOPE_ID_LENGTH",
    "HEADER_TAG_LENGTH",
    "MAX_CONTEXT_BYTES",
    "MAX_CONTEXT_ENTRIES",
    "MAX_CONTEXT_KEY",
    "MAX_CONTEXT_VALUE",
    "MAX_EVENT_TIME_MS",
    "MAX_HEADER_LENGTH",
    "MAX_KEK_URI",
    "MAX_KEK_VERSION",
    "MAX_PRODUCER_ID",
    "MAX_RECORD_PLAINTEXT",
    "MAX_REGION",
    "MAX_SEGMENT_COUNT",
    "MAX_SEGMENT_SIZE",
    "MAX_STREAM_LENGTH",
    "MAX_STREAM_RECORDS",
    "MAX_STREAM_RECORD_PLAINTEXT",
    "MAX_WRAPPED_KEY",
    "MIN_SEGMENT_SIZE",
    "SALT_LENGTH",
    "SCHEMA_FINGERPRINT_LENGTH",
    "TAG_LENGTH",
]

# Fixed-size header fields (bytes).
ENVELOPE_ID_LENGTH = 16
SCHEMA_FINGERPRINT_LENGTH = 32
SALT_LENGTH = 32
COMMITMENT_LENGTH = 32
TAG_LENGTH = 16  # AES-GCM authentication tag
HEADER_TAG_LENGTH = 32  # HMAC-SHA-256 over the header, its last field

# Variable-size header fields: UTF-8 byte lengths (minimum 1 unless noted).
MAX_REGION = 64
MAX_PRODUCER_ID = 256
MAX_KEK_URI = 1024
MAX_KEK_VERSION = 128
MAX_WRAPPED_KEY = 4096  # an RSA-4096 wrap is 512 bytes; cloud KMS ciphertexts are smaller
MAX_CONTEXT_ENTRIES = 32
MAX_CONTEXT_KEY = 128
MAX_CONTEXT_VALUE = 1024  # values may be empty
MAX_CONTEXT_BYTES = 8192  # the encoded entries together (without the 2-byte count)

# The longest possible header: fixed part, prefixed fields at their bounds, context, key
# block and tag. A reader that must rewrite only the header of a file reads at most this.
MAX_HEADER_LENGTH = (
    124
    + (2 + MAX_REGION)
    + (2 + MAX_PRODUCER_ID)
    + 2
    + MAX_CONTEXT_BYTES
    + (2 + MAX_KEK_URI)
    + (2 + MAX_KEK_VERSION)
    + (2 + MAX_WRAPPED_KEY)
    + HEADER_TAG_LENGTH
)  # 13 928

# Bodies.
MAX_RECORD_PLAINTEXT = 1 << 24  # 16 MiB: a record is one small message
MIN_SEGMENT_SIZE = 16
MAX_SEGMENT_SIZE = 1 << 24  # 16 MiB
DEFAULT_SEGMENT_SIZE = 1 << 20  # 1 MiB
MAX_SEGMENT_COUNT = 1 << 32  # indices 0 .. 2**32 - 1 fit the 4-byte nonce/AAD counter

# Record streams (record profile 2, docs/FORMAT.md section 13).
MAX_STREAM_RECORDS = 1 << 16  # 65 536 records a stream (the header's count slot)
MAX_STREAM_RECORD_PLAINTEXT = 1 << 20  # 1 MiB a record (a partner record is at most 1 MiB)
# The whole envelope, header included: 48 MiB, so that its base64 line (64 MiB) fits a
# sealed record file (section 8).
MAX_STREAM_LENGTH = 48 << 20
MAX_EVENT_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z; 0 means "none"
