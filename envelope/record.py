"""Record envelopes: one small message sealed under a per-envelope key, in one GCM call.

``header || u32 BE length || ciphertext`` (docs/FORMAT.md section 3.3). Records are
self-delimiting, but pipelines frame them themselves; this module neither frames many
records nor does I/O. For large data use ``envelope.batch``.
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography.exceptions import InvalidTag

from envelope._keyschedule import segment_aad, segment_nonce
from envelope._sealed_header import authenticate_parsed_header
from envelope._sealing import SealingRequest, start_envelope
from envelope._wire import as_byte_view
from envelope.errors import EnvelopeAuthenticationError, EnvelopeFormatError, EnvelopeLimitError
from envelope.framing import record_frame
from envelope.header import KIND_RECORD, ParsedEnvelope, view_and_header
from envelope.keys import DataKey, WrappedKey
from envelope.limits import MAX_RECORD_PLAINTEXT

__all__ = ["open_record", "seal_record"]


def seal_record(
    plaintext: bytes,
    *,
    data_key: DataKey,
    wrapped_key: WrappedKey,
    region: str,
    producer_id: str,
    schema_fingerprint: bytes,
    context: Mapping[str, str],
) -> bytes:
    """Seal one message; a fresh random salt and envelope id make every envelope's key unique."""
    return _seal_record(
        plaintext,
        SealingRequest(data_key, wrapped_key, region, producer_id, schema_fingerprint, context),
    )


def _seal_record_with(
    plaintext: bytes, *, salt: bytes, envelope_id: bytes, **arguments: object
) -> bytes:
    """Deterministic sealing for known-answer vectors only: a reused salt reuses the key."""
    request = SealingRequest(**arguments)  # type: ignore[arg-type]
    return _seal_record(plaintext, request, salt=salt, envelope_id=envelope_id)


def _seal_record(
    plaintext: bytes,
    request: SealingRequest,
    *,
    salt: bytes | None = None,
    envelope_id: bytes | None = None,
) -> bytes:
    body = as_byte_view(plaintext)
    if len(body) > MAX_RECORD_PLAINTEXT:
        raise EnvelopeLimitError(
            f"record plaintext length {len(body)} exceeds {MAX_RECORD_PLAINTEXT}"
        )
    started = start_envelope(
        request, kind=KIND_RECORD, segment_size=0, salt=salt, envelope_id=envelope_id
    )
    sealed_header = started.sealed_header
    ciphertext = started.keys.cipher.encrypt(
        segment_nonce(0), body, segment_aad(sealed_header.core, 0, True)
    )
    return b"".join((sealed_header.wire, len(ciphertext).to_bytes(4, "big"), ciphertext))


def open_record(envelope: bytes | ParsedEnvelope, data_key: DataKey) -> bytes:
    """The plaintext of a record envelope; the whole of ``envelope`` must be that record.

    ``envelope`` is the bytes or their :class:`ParsedEnvelope` (then the header is not
    parsed again). Raises :class:`EnvelopeFormatError` for structure and the uniform
    :class:`EnvelopeAuthenticationError` for a wrong key or any tampering.
    """
    view, header, layout = view_and_header(envelope)
    if header.kind != KIND_RECORD:
        raise EnvelopeFormatError(f"kind is {header.kind!r}, expected 'record'")
    frame = record_frame(view, layout.end)
    if frame.end != len(view):
        raise EnvelopeFormatError(f"{len(view) - frame.end} trailing bytes after the record")
    keys = authenticate_parsed_header(view, header, layout, data_key)
    aad = segment_aad(view[: layout.core_end], 0, True)
    try:
        return keys.cipher.decrypt(segment_nonce(0), view[frame.start : frame.end], aad)
    except InvalidTag:
        raise EnvelopeAuthenticationError() from None
