"""Record envelopes: one small message sealed under a per-envelope key, in one GCM call.

``header || u32 BE length || ciphertext`` (docs/FORMAT.md section 3.3). Records are
self-delimiting, but pipelines frame them themselves; this module neither frames many
records nor does I/O. For large data use ``envelope.batch``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag

from envelope._keyschedule import derive_envelope_keys, segment_aad, segment_nonce
from envelope._sealed_header import authenticate_parsed_header, seal_header
from envelope._wire import as_byte_view
from envelope.errors import EnvelopeAuthenticationError, EnvelopeFormatError, EnvelopeLimitError
from envelope.framing import record_frame
from envelope.header import (
    ALGORITHM_AES256GCM_HKDF_SHA512,
    KIND_RECORD,
    EnvelopeHeader,
    ParsedEnvelope,
    view_and_header,
)
from envelope.keys import DataKey, WrappedKey
from envelope.limits import ENVELOPE_ID_LENGTH, MAX_RECORD_PLAINTEXT, SALT_LENGTH

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
    return _seal_record_with(
        plaintext,
        data_key=data_key,
        wrapped_key=wrapped_key,
        region=region,
        producer_id=producer_id,
        schema_fingerprint=schema_fingerprint,
        context=context,
        salt=os.urandom(SALT_LENGTH),
        envelope_id=os.urandom(ENVELOPE_ID_LENGTH),
    )


def _seal_record_with(
    plaintext: bytes,
    *,
    data_key: DataKey,
    wrapped_key: WrappedKey,
    region: str,
    producer_id: str,
    schema_fingerprint: bytes,
    context: Mapping[str, str],
    salt: bytes,
    envelope_id: bytes,
) -> bytes:
    """Deterministic sealing for known-answer vectors only: a reused salt reuses the key."""
    body = as_byte_view(plaintext)
    if len(body) > MAX_RECORD_PLAINTEXT:
        raise EnvelopeLimitError(
            f"record plaintext length {len(body)} exceeds {MAX_RECORD_PLAINTEXT}"
        )
    keys = derive_envelope_keys(data_key, salt, ALGORITHM_AES256GCM_HKDF_SHA512)
    sealed_header = seal_header(
        EnvelopeHeader(
            kind=KIND_RECORD,
            algorithm=ALGORITHM_AES256GCM_HKDF_SHA512,
            envelope_id=envelope_id,
            wrapped_key=wrapped_key,
            region=region,
            producer_id=producer_id,
            schema_fingerprint=schema_fingerprint,
            context=context,
            salt=salt,
            commitment=keys.commitment,
            segment_size=0,
        ),
        keys,
    )
    ciphertext = keys.cipher.encrypt(
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
