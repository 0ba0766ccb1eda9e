"""Read the one plaintext part of a Parquet file with an encrypted footer: its footer key.

What it does: a PME file with an encrypted footer ends with ``FileCryptoMetaData`` (Thrift
compact protocol, plaintext), the encrypted footer, a 4-byte little-endian length of both,
and the magic ``PARE``. ``FileCryptoMetaData.key_metadata`` is the footer key's material,
which pyarrow writes as JSON (``PKMT1``, internal storage) naming the master key id and the
master-key-wrapped blob. ``footer_key_blob`` returns those two, so that the region-pinned
writer can tell which region's key a file needs (``enclave_workers.pme_keys`` parses the
blob) without any key. Every length is checked before it is used; problems raise
``PmeFooterError`` naming the field.

What it does not: no decryption, no key; it reads nothing but the file's tail. Column keys
live inside the encrypted footer and are not visible here.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass

from .errors import TransformError

__all__ = ["ENCRYPTED_FOOTER_MAGIC", "FooterKey", "PmeFooterError", "footer_key_blob"]

ENCRYPTED_FOOTER_MAGIC = b"PARE"
MAX_KEY_METADATA_BYTES = 64 << 10
MAX_THRIFT_DEPTH = 8
MAX_THRIFT_ITEMS = 4096
_FILE_CRYPTO_KEY_METADATA_FIELD = 2
_BINARY, _STRUCT, _LIST, _SET, _MAP = 8, 12, 9, 10, 11
_FIXED_WIDTH = {1: 0, 2: 0, 3: 1, 7: 8}     # bool true/false carry no bytes; byte; double
_VARINT_TYPES = frozenset({4, 5, 6})        # i16, i32, i64 (zigzag varints)


class PmeFooterError(TransformError):
    """A file is not a PME Parquet file with an encrypted footer and internal key material."""


@dataclass(frozen=True)
class FooterKey:
    master_key_id: str
    wrapped_blob: bytes


def footer_key_blob(data: bytes) -> FooterKey:
    """The footer key's master key id and master-key-wrapped blob from a PME file's tail."""
    if len(data) < 12 or data[:4] != ENCRYPTED_FOOTER_MAGIC or data[-4:] != \
            ENCRYPTED_FOOTER_MAGIC:
        raise PmeFooterError("not a Parquet file with an encrypted footer (magic PARE)")
    (length,) = struct.unpack("<I", data[-8:-4])
    if length > len(data) - 12:
        raise PmeFooterError(f"footer length {length} is over the file's {len(data) - 12} "
                             "bytes of content")
    reader = _CompactReader(memoryview(data)[len(data) - 8 - length:len(data) - 8])
    metadata = reader.top_level_binary(_FILE_CRYPTO_KEY_METADATA_FIELD)
    if metadata is None:
        raise PmeFooterError("FileCryptoMetaData has no key_metadata for the footer key")
    return _parse_key_material(metadata)


def _parse_key_material(metadata: bytes) -> FooterKey:
    try:
        material = json.loads(metadata.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PmeFooterError("footer key_metadata is not JSON key material") from None
    if not isinstance(material, dict) or material.get("keyMaterialType") != "PKMT1":
        raise PmeFooterError("footer key_metadata is not PME key material (PKMT1)")
    if material.get("internalStorage") is not True:
        raise PmeFooterError("footer key material is stored outside the file; sealbeam "
                             "writes it inside")
    master_key_id = material.get("masterKeyID")
    wrapped_field = "wrappedKEK" if material.get("doubleWrapping") is True else "wrappedDEK"
    wrapped_text = material.get(wrapped_field)
    if not isinstance(master_key_id, str) or not master_key_id:
        raise PmeFooterError("footer key material has no masterKeyID")
    if not isinstance(wrapped_text, str) or not wrapped_text:
        raise PmeFooterError(f"footer key material has no {wrapped_field}")
    try:
        blob = base64.b64decode(wrapped_text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise PmeFooterError(f"footer key material's {wrapped_field} is not base64") from None
    return FooterKey(master_key_id, blob)


class _CompactReader:
    """Just enough of the Thrift compact protocol to find one binary field of a struct."""

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._offset = 0

    def _byte(self, field: str) -> int:
        if self._offset >= len(self._data):
            raise PmeFooterError(f"FileCryptoMetaData is truncated in {field}")
        value = self._data[self._offset]
        self._offset += 1
        return value

    def _varint(self, field: str) -> int:
        value = 0
        for shift in range(0, 70, 7):
            byte = self._byte(field)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise PmeFooterError(f"FileCryptoMetaData has an overlong varint in {field}")

    def _skip(self, count: int, field: str) -> None:
        if count > len(self._data) - self._offset:
            raise PmeFooterError(f"FileCryptoMetaData is truncated in {field}")
        self._offset += count

    def _binary(self, field: str, maximum: int) -> bytes:
        length = self._varint(f"{field} length")
        if length > maximum:
            raise PmeFooterError(f"FileCryptoMetaData {field} is {length} bytes, over {maximum}")
        start = self._offset
        self._skip(length, field)
        return bytes(self._data[start:self._offset])

    def top_level_binary(self, wanted: int) -> bytes | None:
        """The binary field ``wanted`` of the struct at offset 0 (others are skipped)."""
        found = None
        field_id = 0
        for _ in range(MAX_THRIFT_ITEMS):
            header = self._byte("a field header")
            if header == 0:
                return found
            kind = header & 0x0F
            delta = header >> 4
            field_id = field_id + delta if delta else _zigzag(self._varint("a field id"))
            if field_id == wanted and kind == _BINARY:
                found = self._binary("key_metadata", MAX_KEY_METADATA_BYTES)
            else:
                self._skip_value(kind, 1)
        raise PmeFooterError(f"FileCryptoMetaData has over {MAX_THRIFT_ITEMS} fields")

    def _skip_value(self, kind: int, depth: int) -> None:
        if depth > MAX_THRIFT_DEPTH:
            raise PmeFooterError(f"FileCryptoMetaData nests deeper than {MAX_THRIFT_DEPTH}")
        if kind in _FIXED_WIDTH:
            self._skip(_FIXED_WIDTH[kind], "a fixed-width value")
        elif kind in _VARINT_TYPES:
            self._varint("an integer")
        elif kind == _BINARY:
            self._binary("a binary value", len(self._data))
        elif kind == _STRUCT:
            self._skip_struct(depth)
        elif kind in (_LIST, _SET):
            header = self._byte("a list header")
            size = header >> 4 if header >> 4 != 15 else self._varint("a list size")
            self._skip_items(size, [header & 0x0F], depth)
        elif kind == _MAP:
            size = self._varint("a map size")
            if size:
                types = self._byte("a map's types")
                self._skip_items(size, [types >> 4, types & 0x0F], depth)
        else:
            raise PmeFooterError(f"FileCryptoMetaData has an unknown Thrift type {kind}")

    def _skip_items(self, size: int, kinds: list[int], depth: int) -> None:
        if size > MAX_THRIFT_ITEMS:
            raise PmeFooterError(f"FileCryptoMetaData has a collection of {size} items")
        for _ in range(size):
            for kind in kinds:
                if kind in (1, 2):      # a bool inside a collection is one byte
                    self._skip(1, "a boolean")
                else:
                    self._skip_value(kind, depth + 1)

    def _skip_struct(self, depth: int) -> None:
        for _ in range(MAX_THRIFT_ITEMS):
            header = self._byte("a field header")
            if header == 0:
                return
            if not header >> 4:
                self._varint("a field id")
            self._skip_value(header & 0x0F, depth + 1)
        raise PmeFooterError(f"FileCryptoMetaData has a struct of over {MAX_THRIFT_ITEMS} "
                             "fields")


def _zigzag(value: int) -> int:
    return (value >> 1) ^ -(value & 1)
