"""``SealedEnvelope``: an envelope's bytes with the header facts the pipeline routes by.

What it does: ``ParseSealed`` reads each header once, outside the TEE, and sends this small
record on instead of bare bytes, so the steps between the parse and the confidential step —
de-duplication (``dedupe``) by envelope id and keyed batching (``batching``) by data key —
use the header without parsing it again. ``digest`` (SHA-256 of the bytes) tells an exact
copy (a replay or redelivery) from another envelope that claims the same id. ``records`` is
how many partner records the envelope stands for in a run's accounting: 1 for a v1 record
or a sealed batch (a batch counts as one input), the record count of a ``record-stream``
(record profile 2), so that batching bounds and the ``duplicates`` metric count records.

What it does not: none of these facts is authenticated here (that needs the data key, inside
the TEE). They only decide where an envelope goes and which envelopes share a batch; the
confidential step authenticates every header, so a forged header can only misroute its own
envelope into a dead letter.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from envelope import EnvelopeHeader

__all__ = ["SealedEnvelope", "sealed_envelope"]


@dataclass(frozen=True)
class SealedEnvelope:
    """One envelope, still sealed, with what its (unauthenticated) header says."""

    envelope_id: bytes
    key_id: str
    region: str
    producer_id: str
    digest: bytes
    data: bytes
    records: int = 1

    @property
    def record_id(self) -> str:
        """Hex of the envelope id, as dead letters name an envelope."""
        return self.envelope_id.hex()


def sealed_envelope(data: bytes, header: EnvelopeHeader, records: int = 1, *,
                    key_id: str | None = None) -> SealedEnvelope:
    """The pipeline record of ``data`` whose header is ``header`` (``records``: see above;
    ``key_id``: ``header.wrapped_key.key_id`` when the caller already has it)."""
    return SealedEnvelope(header.envelope_id, key_id or header.wrapped_key.key_id,
                          header.region, header.producer_id, hashlib.sha256(data).digest(),
                          data, records)
