"""sealbeam's sealed formats: envelope v1 records and batches, data keys, key transport.

The floor every other room stands on. Pure functions over bytes: this package imports
nothing of sealbeam's and nothing outside the standard library and ``cryptography``, and
does no I/O (a :class:`BatchSealer` writes only to a file object its caller hands it).
The byte layout is specified in docs/FORMAT.md.

- Records: :func:`seal_record` / :func:`open_record` (one small message); many under one
  DEK in one call: :func:`seal_records` / :func:`open_records` (:class:`RecordOpener`);
  :class:`RecordSorter` parses each record's header once into :class:`RecordGroup` s that
  ``RecordOpener.open_group`` opens, and :func:`peek_record` reads what routing needs.
- Record streams (record profile 2, FORMAT.md section 13: many records under one
  per-stream key): :func:`seal_record_stream`, :func:`open_record_stream`,
  :func:`read_record_stream` (structure, no key), :func:`extract_stream_record` /
  :func:`open_stream_record` (one record kept sealed, e.g. in a dead letter;
  :func:`extract_stream_records` for many in one walk), :func:`extract_stream_piece` /
  :func:`read_stream_piece` / :func:`open_stream_piece` (some records of a stream, split off
  without a key, e.g. per event-time window).
- Batches: :func:`seal_batch`, the streaming :class:`BatchSealer`, :func:`iter_open_batch`
  (segment by segment), :func:`open_batch` and :func:`open_batch_into` (into a buffer the
  caller allocates).
- Headers without a key: :func:`read_header`, :func:`envelope_length`; :func:`parse_envelope`
  parses once into a :class:`ParsedEnvelope` (header bound to its bytes) that the openers
  accept in place of the bytes.
- Rewrap (new KEK version, payload bytes unchanged): :func:`rewrap_envelope`, and
  :func:`rewrap_header` for rewriting only the header prefix of a large file.
- Keys: :class:`DataKey`, :class:`KeyReference`, :class:`WrappedKey`, :func:`dek_wrap_aad`.
- Transport to a TEE: :class:`TeeKeyPair`, :func:`seal_to_tee`, :func:`report_data_binding`,
  :func:`release_info`.
- Errors: :class:`EnvelopeError` and its subclasses; every cryptographic failure is the one
  :class:`EnvelopeAuthenticationError`.
"""

from __future__ import annotations

from envelope.batch import (
    BatchSealer,
    iter_open_batch,
    open_batch,
    open_batch_into,
    seal_batch,
)
from envelope.errors import (
    EnvelopeAuthenticationError,
    EnvelopeError,
    EnvelopeFormatError,
    EnvelopeLimitError,
    KeyTransportError,
    RecordIndexError,
)
from envelope.framing import envelope_length
from envelope.header import (
    ALGORITHM_AES256GCM_HKDF_SHA512,
    FORMAT_VERSION,
    MAGIC,
    EnvelopeHeader,
    ParsedEnvelope,
    parse_envelope,
    read_header,
)
from envelope.keys import DataKey, KeyReference, WrappedKey, dek_wrap_aad
from envelope.limits import (
    DEFAULT_SEGMENT_SIZE,
    MAX_HEADER_LENGTH,
    MAX_STREAM_LENGTH,
    MAX_STREAM_RECORD_PLAINTEXT,
    MAX_STREAM_RECORDS,
)
from envelope.record import open_record, seal_record
from envelope.record_batch import RecordOpener, open_records, seal_records
from envelope.record_groups import (
    RecordGroup,
    RecordSorter,
    RecordSuffix,
    peek_record,
    record_envelope_id,
)
from envelope.record_stream import (
    KIND_RECORD_STREAM,
    STREAM_RECORD_MARK,
    OpenedRecordStream,
    RecordStreamLayout,
    StreamPiece,
    StreamRecord,
    StreamRecordExcerpt,
    StreamRecordFailure,
    extract_stream_piece,
    extract_stream_record,
    extract_stream_records,
    index_ranges,
    is_stream_excerpt,
    open_record_stream,
    open_stream_piece,
    open_stream_record,
    parse_index_ranges,
    piece_records,
    read_record_stream,
    read_stream_piece,
    read_stream_record,
    seal_record_stream,
)
from envelope.rewrap import rewrap_envelope, rewrap_header
from envelope.transport import (
    TEE_KEY_ALGORITHM,
    TEE_PUBLIC_KEY_LENGTH,
    TeeKeyPair,
    release_info,
    report_data_binding,
    seal_to_tee,
)

__all__ = [
    "ALGORITHM_AES256GCM_HKDF_SHA512",
    "DEFAULT_SEGMENT_SIZE",
    "FORMAT_VERSION",
    "KIND_RECORD_STREAM",
    "MAGIC",
    "MAX_HEADER_LENGTH",
    "MAX_STREAM_LENGTH",
    "MAX_STREAM_RECORDS",
    "MAX_STREAM_RECORD_PLAINTEXT",
    "STREAM_RECORD_MARK",
    "TEE_KEY_ALGORITHM",
    "TEE_PUBLIC_KEY_LENGTH",
    "BatchSealer",
    "DataKey",
    "EnvelopeAuthenticationError",
    "EnvelopeError",
    "EnvelopeFormatError",
    "EnvelopeHeader",
    "EnvelopeLimitError",
    "KeyReference",
    "KeyTransportError",
    "OpenedRecordStream",
    "ParsedEnvelope",
    "RecordGroup",
    "RecordIndexError",
    "RecordOpener",
    "RecordSorter",
    "RecordStreamLayout",
    "RecordSuffix",
    "StreamPiece",
    "StreamRecord",
    "StreamRecordExcerpt",
    "StreamRecordFailure",
    "TeeKeyPair",
    "WrappedKey",
    "dek_wrap_aad",
    "envelope_length",
    "extract_stream_piece",
    "extract_stream_record",
    "extract_stream_records",
    "index_ranges",
    "is_stream_excerpt",
    "iter_open_batch",
    "open_batch",
    "open_batch_into",
    "open_record",
    "open_record_stream",
    "open_records",
    "open_stream_piece",
    "open_stream_record",
    "parse_envelope",
    "parse_index_ranges",
    "peek_record",
    "piece_records",
    "read_header",
    "read_record_stream",
    "read_stream_piece",
    "read_stream_record",
    "record_envelope_id",
    "release_info",
    "report_data_binding",
    "rewrap_envelope",
    "rewrap_header",
    "seal_batch",
    "seal_record",
    "seal_record_stream",
    "seal_records",
    "seal_to_tee",
]
