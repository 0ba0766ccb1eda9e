"""Many record envelopes under one data key: seal or open a whole list in one call.

The per-record format is unchanged (docs/FORMAT.md section 3.3): every record still has its
own salt, key commitment, header tag and AES-GCM key, and every check of
:func:`envelope.open_record` still runs, in the same order, with the same typed errors. What
a batch call saves is the work that repeats from record to record:

- **validate once**: records sealed together share every header byte after the fixed part
  (region, producer, context, key block). :class:`RecordOpener` fully decodes and validates
  that variable part the first time it sees it, then recognises later headers by comparing
  their bytes with the validated ones (equal bytes decode to equal fields, because the
  header is a self-delimiting prefix code); only the 124-byte fixed part is unpacked and
  checked per record. A header it has not seen is decoded in full, like ``read_header``.
- **per-DEK state**: the DEK's bytes and the HKDF info are taken once, not per record.
- **plain tuples**: no ``EnvelopeHeader``/``ParsedEnvelope`` objects are built for records
  it recognises; an error is returned in the record's place, not raised, so one bad record
  does not cost the batch an exception unwind or a Python-level retry.
- **one parse**: :meth:`RecordOpener.open_group` opens a ``RecordGroup`` that
  ``envelope.RecordSorter`` made (each header parsed once there, grouped by header suffix),
  so the header is not looked at again: only the body, commitment, tag and GCM remain.

:func:`seal_records` is the mirror image: the request is validated and its header suffix
and key block encoded once; each record gets a fresh random salt and envelope id.
No I/O; nothing here logs.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from envelope._header_codec import (
    FIXED,
    FIXED_HEADER_LENGTH,
    FORMAT_VERSION,
    KIND_CODES,
    MAGIC,
    decode_header_fields,
    encode_core_header,
    encode_key_block,
)
from envelope._keyschedule import hkdf_info, hkdf_sha512_96
from envelope._wire import as_byte_view
from envelope.errors import (
    EnvelopeAuthenticationError,
    EnvelopeError,
    EnvelopeFormatError,
    EnvelopeLimitError,
)
from envelope.header import (
    ALGORITHM_AES256GCM_HKDF_SHA512,
    KIND_RECORD,
    EnvelopeHeader,
    ParsedEnvelope,
)
from envelope.keys import DataKey, WrappedKey
from envelope.limits import (
    COMMITMENT_LENGTH,
    ENVELOPE_ID_LENGTH,
    HEADER_TAG_LENGTH,
    MAX_RECORD_PLAINTEXT,
    SALT_LENGTH,
    TAG_LENGTH,
)
from envelope.record_groups import COMMITMENT_END, COMMITMENT_START, SALT_START, RecordGroup

__all__ = ["RecordOpener", "open_records", "seal_records"]

_RECORD_CODE = KIND_CODES[KIND_RECORD]
_ALGORITHM = ALGORITHM_AES256GCM_HKDF_SHA512
_INFO = hkdf_info(_ALGORITHM)
_NONCE_0 = bytes(12)
_AAD_SUFFIX = b"\x00\x00\x00\x00\x01"  # u32 BE segment index 0 || u8 final 1
_MAX_RECORD_LENGTH = MAX_RECORD_PLAINTEXT + TAG_LENGTH
_AES_END = 32
_COMMITMENT_END = _AES_END + COMMITMENT_LENGTH
_CACHED_SUFFIXES = 16  # distinct header suffixes remembered per opener


class RecordOpener:
    """Opens record envelopes under one data key; remembers validated header suffixes.

    One opener per DEK (and per worker thread: it is not locked). ``open_many`` returns,
    per input, the plaintext or the :class:`EnvelopeError` that ``open_record`` would have
    raised for it: :class:`EnvelopeFormatError`/:class:`EnvelopeLimitError` naming the
    field, or the uniform :class:`EnvelopeAuthenticationError`.
    """

    __slots__ = ("_secret", "_suffixes")

    def __init__(self, data_key: DataKey) -> None:
        if not isinstance(data_key, DataKey):
            raise TypeError(f"data_key must be DataKey, not {type(data_key).__name__}")
        self._secret = data_key.secret_bytes()
        # (suffix bytes, core_end, tag_start): header bytes [124, tag_start) once validated.
        self._suffixes: list[tuple[bytes, int, int]] = []

    def __repr__(self) -> str:
        return f"RecordOpener(<secret>, {len(self._suffixes)} cached header suffixes)"

    def open_many(
        self, envelopes: Sequence[bytes | bytearray | memoryview | ParsedEnvelope]
    ) -> list[bytes | EnvelopeError]:
        """Plaintext or error per envelope, in order (see the class docstring)."""
        results: list[bytes | EnvelopeError] = []
        append = results.append
        for envelope in envelopes:
            try:
                append(self.open(envelope))
            except EnvelopeError as error:
                append(error)
        return results

    def open(self, envelope: bytes | bytearray | memoryview | ParsedEnvelope) -> bytes:
        """One record's plaintext; raises what :func:`envelope.open_record` raises."""
        if type(envelope) is ParsedEnvelope:
            layout = envelope.layout
            if envelope.header.kind != KIND_RECORD:
                raise EnvelopeFormatError(f"kind is {envelope.header.kind!r}, expected 'record'")
            view = envelope.view
            salt, commitment = envelope.header.salt, envelope.header.commitment
            core_end, tag_start = layout.core_end, layout.tag_start
        else:
            view = as_byte_view(envelope)
            salt, commitment, core_end, tag_start = self._header(view)
        return self._decrypt(view, salt, commitment, core_end, tag_start)

    def open_group(self, group: RecordGroup) -> list[bytes | EnvelopeError]:
        """Plaintext or error per envelope of ``group``, in order (``envelope.RecordSorter``).

        The sorter already checked each header (fixed part by bytes, suffix decoded once), so
        only the body's structure, the commitment and tag, and the GCM call remain per
        record: what :meth:`_decrypt` does for one, in one loop without a call per record.
        """
        header = group.header
        core_end, tag_start = header.core_end, header.tag_start
        end = header.header_end
        start = end + 4
        secret = self._secret
        results: list[bytes | EnvelopeError] = []
        append = results.append
        for envelope in group.envelopes:
            size = len(envelope)
            if size < start:
                append(EnvelopeFormatError(
                    f"record length truncated: needs 4 bytes, {size - end} remain"))
                continue
            length = int.from_bytes(envelope[end:start], "big")
            if length > _MAX_RECORD_LENGTH or length < TAG_LENGTH or size != start + length:
                append(_body_error(length, size - start))
                continue
            okm = hkdf_sha512_96(secret, envelope[SALT_START:COMMITMENT_START], _INFO)
            view = memoryview(envelope)
            expected_tag = hmac.digest(okm[_COMMITMENT_END:], view[:tag_start], "sha256")
            commitment_matches = hmac.compare_digest(
                okm[_AES_END:_COMMITMENT_END], envelope[COMMITMENT_START:COMMITMENT_END])
            tag_matches = hmac.compare_digest(expected_tag, envelope[tag_start:end])
            if not (commitment_matches & tag_matches):
                append(EnvelopeAuthenticationError())
                continue
            try:
                append(AESGCM(okm[:_AES_END]).decrypt(
                    _NONCE_0, view[start:], envelope[:core_end] + _AAD_SUFFIX))
            except InvalidTag:
                append(EnvelopeAuthenticationError())
        return results

    def _header(self, view: memoryview) -> tuple[bytes, bytes, int, int]:
        """(salt, commitment, core_end, tag_start) of a record header, validated."""
        size = len(view)
        if size >= FIXED_HEADER_LENGTH:
            (magic, version, kind, algorithm, _, _, salt, commitment,
             segment_size) = FIXED.unpack_from(view)
            if (magic == MAGIC and version == FORMAT_VERSION and kind == _RECORD_CODE
                    and algorithm == _ALGORITHM and segment_size == 0):
                for suffix, core_end, tag_start in self._suffixes:
                    if (tag_start + HEADER_TAG_LENGTH <= size
                            and view[FIXED_HEADER_LENGTH:tag_start] == suffix):
                        return salt, commitment, core_end, tag_start
        return self._decode_and_remember(view)

    def _decode_and_remember(self, view: memoryview) -> tuple[bytes, bytes, int, int]:
        """The full strict decode (every field and bound), then cache the header suffix."""
        (kind, _, _, _, salt, commitment, _, _, _, _, core_end, _, _, _, tag_start,
         _) = decode_header_fields(view)
        if kind != KIND_RECORD:
            raise EnvelopeFormatError(f"kind is {kind!r}, expected 'record'")
        if len(self._suffixes) >= _CACHED_SUFFIXES:
            self._suffixes.pop(0)
        self._suffixes.append((bytes(view[FIXED_HEADER_LENGTH:tag_start]), core_end, tag_start))
        return salt, commitment, core_end, tag_start

    def _decrypt(self, view: memoryview, salt: bytes, commitment: bytes, core_end: int,
                 tag_start: int) -> bytes:
        """Body structure, then commitment and header tag, then the one GCM call."""
        end = tag_start + HEADER_TAG_LENGTH
        size = len(view)
        if size - end < 4:
            raise EnvelopeFormatError(
                f"record length truncated: needs 4 bytes, {size - end} remain")
        length = int.from_bytes(view[end:end + 4], "big")
        if length > _MAX_RECORD_LENGTH:
            raise EnvelopeLimitError(f"record length {length} exceeds {_MAX_RECORD_LENGTH}")
        if length < TAG_LENGTH:
            raise EnvelopeFormatError(f"record length {length} is below {TAG_LENGTH}")
        start = end + 4
        if size - start < length:
            raise EnvelopeFormatError(
                f"record ciphertext truncated: needs {length} bytes, {size - start} remain")
        if size != start + length:
            raise EnvelopeFormatError(
                f"{size - start - length} trailing bytes after the record")
        okm = hkdf_sha512_96(self._secret, salt, _INFO)
        expected_tag = hmac.digest(okm[_COMMITMENT_END:], view[:tag_start], "sha256")
        commitment_matches = hmac.compare_digest(okm[_AES_END:_COMMITMENT_END], commitment)
        tag_matches = hmac.compare_digest(expected_tag, view[tag_start:end].tobytes())
        if not (commitment_matches & tag_matches):
            raise EnvelopeAuthenticationError()
        try:
            return AESGCM(okm[:_AES_END]).decrypt(
                _NONCE_0, view[start:], view[:core_end].tobytes() + _AAD_SUFFIX)
        except InvalidTag:
            raise EnvelopeAuthenticationError() from None


def _body_error(length: int, remaining: int) -> EnvelopeFormatError:
    """The error :meth:`RecordOpener._decrypt` raises for a record body of ``length`` with
    ``remaining`` bytes after the length field (checked in the same order)."""
    if length > _MAX_RECORD_LENGTH:
        return EnvelopeLimitError(f"record length {length} exceeds {_MAX_RECORD_LENGTH}")
    if length < TAG_LENGTH:
        return EnvelopeFormatError(f"record length {length} is below {TAG_LENGTH}")
    if remaining < length:
        return EnvelopeFormatError(
            f"record ciphertext truncated: needs {length} bytes, {remaining} remain")
    return EnvelopeFormatError(f"{remaining - length} trailing bytes after the record")


def open_records(
    envelopes: Sequence[bytes | bytearray | memoryview | ParsedEnvelope], data_key: DataKey
) -> list[bytes | EnvelopeError]:
    """Per record envelope, its plaintext or its :class:`EnvelopeError` (nothing raised).

    All must be sealed under ``data_key`` (group by wrapped key first); one that is not
    gets :class:`EnvelopeAuthenticationError` in its place, like any other failure.
    """
    return RecordOpener(data_key).open_many(envelopes)


def seal_records(
    plaintexts: Sequence[bytes | bytearray | memoryview],
    *,
    data_key: DataKey,
    wrapped_key: WrappedKey,
    region: str,
    producer_id: str,
    schema_fingerprint: bytes,
    context: Mapping[str, str],
) -> list[bytes]:
    """One record envelope per plaintext, all under ``data_key`` with the same header fields.

    Each is byte-for-byte what :func:`envelope.seal_record` makes (fresh random salt and
    envelope id each); the fields are validated and encoded once. Raises before sealing
    anything if a field or a plaintext length is out of bounds.
    """
    for plaintext in plaintexts:
        if len(plaintext) > MAX_RECORD_PLAINTEXT:
            raise EnvelopeLimitError(
                f"record plaintext length {len(plaintext)} exceeds {MAX_RECORD_PLAINTEXT}")
    template = EnvelopeHeader(
        kind=KIND_RECORD, algorithm=_ALGORITHM, envelope_id=bytes(ENVELOPE_ID_LENGTH),
        wrapped_key=wrapped_key, region=region, producer_id=producer_id,
        schema_fingerprint=schema_fingerprint, context=context, salt=bytes(SALT_LENGTH),
        commitment=bytes(COMMITMENT_LENGTH), segment_size=0,
    )
    suffix = encode_core_header(template)[FIXED_HEADER_LENGTH:]
    key_block = encode_key_block(wrapped_key)
    secret = data_key.secret_bytes()
    schema = bytes(schema_fingerprint)
    pack = FIXED.pack
    sealed: list[bytes] = []
    for plaintext in plaintexts:
        fresh = os.urandom(ENVELOPE_ID_LENGTH + SALT_LENGTH)
        salt = fresh[ENVELOPE_ID_LENGTH:]
        okm = hkdf_sha512_96(secret, salt, _INFO)
        core = pack(MAGIC, FORMAT_VERSION, _RECORD_CODE, _ALGORITHM, fresh[:ENVELOPE_ID_LENGTH],
                    schema, salt, okm[_AES_END:_COMMITMENT_END], 0) + suffix
        unauthenticated = core + key_block
        ciphertext = AESGCM(okm[:_AES_END]).encrypt(_NONCE_0, plaintext, core + _AAD_SUFFIX)
        sealed.append(b"".join((
            unauthenticated, hmac.digest(okm[_COMMITMENT_END:], unauthenticated, "sha256"),
            len(ciphertext).to_bytes(4, "big"), ciphertext)))
    return sealed
