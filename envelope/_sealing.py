"""The start of every new envelope: what the caller states, the keys, the sealed header.

Record and batch sealing begin the same way — take the key and the header fields, pick a
fresh salt and envelope id, derive the per-envelope keys, build the header and seal it —
and differ only in kind and segment size. :func:`start_envelope` does that once for both.
It encrypts no payload and frames nothing; ``envelope.record`` and ``envelope.batch`` do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from envelope._keyschedule import EnvelopeKeys, derive_envelope_keys
from envelope._sealed_header import SealedHeader, seal_header
from envelope.header import ALGORITHM_AES256GCM_HKDF_SHA512, EnvelopeHeader
from envelope.keys import DataKey, WrappedKey
from envelope.limits import ENVELOPE_ID_LENGTH, SALT_LENGTH

__all__ = ["SealingRequest", "StartedEnvelope", "start_envelope"]


@dataclass(frozen=True)
class SealingRequest:
    """The key to seal under and the header fields the caller chooses (FORMAT.md 3.2)."""

    data_key: DataKey
    wrapped_key: WrappedKey
    region: str
    producer_id: str
    schema_fingerprint: bytes
    context: Mapping[str, str]


@dataclass(frozen=True)
class StartedEnvelope:
    """A new envelope's header, its keys, and the header's wire bytes with their tag."""

    header: EnvelopeHeader
    keys: EnvelopeKeys
    sealed_header: SealedHeader


def start_envelope(
    request: SealingRequest,
    *,
    kind: str,
    segment_size: int,
    salt: bytes | None = None,
    envelope_id: bytes | None = None,
) -> StartedEnvelope:
    """Derive the keys and seal the header of a new envelope of ``kind``.

    ``salt`` and ``envelope_id`` are fresh random bytes unless given; only known-answer
    vectors give them, because a reused salt reuses the envelope's key.
    """
    salt = os.urandom(SALT_LENGTH) if salt is None else salt
    envelope_id = os.urandom(ENVELOPE_ID_LENGTH) if envelope_id is None else envelope_id
    keys = derive_envelope_keys(request.data_key, salt, ALGORITHM_AES256GCM_HKDF_SHA512)
    header = EnvelopeHeader(
        kind=kind,
        algorithm=ALGORITHM_AES256GCM_HKDF_SHA512,
        envelope_id=envelope_id,
        wrapped_key=request.wrapped_key,
        region=request.region,
        producer_id=request.producer_id,
        schema_fingerprint=request.schema_fingerprint,
        context=request.context,
        salt=salt,
        commitment=keys.commitment,
        segment_size=segment_size,
    )
    return StartedEnvelope(header, keys, seal_header(header, keys))
