"""Shared helpers for the envelope tests: standard sealing arguments and a raw header builder.

``raw_header`` packs header fields exactly as docs/FORMAT.md section 2 describes, without
any validation, so tests can build the malformed headers that ``envelope`` refuses to write.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from envelope import DataKey, KeyReference, WrappedKey

DEK = DataKey(bytes(range(32)))
OTHER_DEK = DataKey(bytes(range(1, 33)))
WRAPPED = WrappedKey(KeyReference("local://keyring/eu/kek-1", "1"), b"\xa5" * 40)
SCHEMA = bytes(range(0x60, 0x80))


def seal_arguments(**overrides: object) -> dict[str, object]:
    arguments: dict[str, object] = {
        "data_key": DEK,
        "wrapped_key": WRAPPED,
        "region": "eu",
        "producer_id": "acme",
        "schema_fingerprint": SCHEMA,
        "context": {"dataset": "payments"},
    }
    arguments.update(overrides)
    return arguments


def prefixed(raw: bytes, length: int | None = None) -> bytes:
    return struct.pack(">H", len(raw) if length is None else length) + raw


def raw_header(
    *,
    magic: bytes = b"SBEV",
    version: int = 1,
    kind: int = 1,
    algorithm: int = 1,
    envelope_id: bytes = b"\x11" * 16,
    schema_fingerprint: bytes = SCHEMA,
    salt: bytes = b"\x22" * 32,
    commitment: bytes = b"\x33" * 32,
    segment_size: int = 0,
    region: bytes = b"eu",
    producer_id: bytes = b"acme",
    kek_uri: bytes = b"local://keyring/eu/kek-1",
    kek_version: bytes = b"1",
    wrapped_key: bytes = b"\xa5" * 40,
    context: Sequence[tuple[bytes, bytes]] = (),
    context_count: int | None = None,
    header_tag: bytes = b"\x44" * 32,
) -> bytes:
    """Header bytes per FORMAT.md section 2 (core, key block, tag), with no checks at all."""
    fixed = struct.pack(
        ">4sBBH16s32s32s32sI",
        magic,
        version,
        kind,
        algorithm,
        envelope_id,
        schema_fingerprint,
        salt,
        commitment,
        segment_size,
    )
    entries = b"".join(prefixed(key) + prefixed(value) for key, value in context)
    count = len(context) if context_count is None else context_count
    return b"".join(
        (
            fixed,
            prefixed(region),
            prefixed(producer_id),
            struct.pack(">H", count),
            entries,
            prefixed(kek_uri),
            prefixed(kek_version),
            prefixed(wrapped_key),
            header_tag,
        )
    )
