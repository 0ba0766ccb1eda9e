"""Keyed, deterministic batches for the confidential step: data-key locality, count and bytes.

Usage::

    batches = unique_envelopes | BatchByDataKey(max_count=2000, max_bytes=64 << 20, shards=8)
    # EnvelopeBatch elements: batch_id (16 bytes) and the envelopes, sorted

What it does: every ``SealedEnvelope`` gets the key ``(region, producer, shard)`` with
``shard = H(data-key id, H(envelope id) mod spread) mod shards`` (``H``: SHA-256, the same in
every process). With ``spread=1`` every envelope of one data key lands in one group, so each
DEK is released by one worker per run (and per key-cache lifetime); ``shards`` bounds how many
groups, and so workers, one (region, producer) spreads over; ``spread`` lets one very large
DEK spread over that many groups. A ``GroupByKey`` collects each group (per window, so a
stream's window closes a group), and its envelopes are sorted by (data key, envelope id,
digest) and cut into batches of near-equal count, at most ``max_count`` records and at most
``max_bytes`` bytes (an envelope larger than ``max_bytes`` is a batch of its own). Records are
counted by ``SealedEnvelope.records``: a v1 record or a sealed batch is one, a record stream
(profile 2) its record count, and an envelope is never split (a stream of more than
``max_count`` records is a batch of its own). Batches are
therefore a function of the group's contents alone, not of bundles or arrival order: a rerun
over the same input forms the same batches, and ``batch_id`` — a digest of the sorted
envelope ids — names what the confidential step writes from them.

Broker calls this implies (docs/ARCHITECTURE.md): a worker process attests once (plus
re-attestations before expiry) and releases a DEK once per key-cache lifetime, so releases per
run are at most ``sum over DEKs of min(spread, W)`` for W worker processes, and at most the
number of DEKs with ``spread=1``.

``BundleBatches`` is the latency-first alternative for streaming runs that must not wait for
a window to close: batches are cut per bundle and window (count and bytes bounds, sorted, the
same ``batch_id``), so they are only as big, and as repeatable, as the runner's bundles.

What it does not: no keys, no opening; a group is held by one worker while it is cut, so its
size is what one worker can list (its envelopes are already in the runner's shuffle).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import BoundedWindow
from apache_beam.utils.windowed_value import WindowedValue

from .errors import TransformConfigError
from .metrics import DUPLICATES, NAMESPACE
from .sealed import SealedEnvelope

__all__ = ["DEFAULT_MAX_BATCH_BYTES", "DEFAULT_SHARDS", "BatchByDataKey", "BundleBatches",
           "EnvelopeBatch", "batch_id_of", "cut_batches", "group_key"]

DEFAULT_MAX_BATCH_BYTES = 64 << 20
DEFAULT_SHARDS = 8
_BATCH_ID_DOMAIN = b"sealbeam.batch.v1\x00"


@dataclass(frozen=True)
class EnvelopeBatch:
    """Envelopes the confidential step handles together, sorted; ``batch_id`` names them."""

    batch_id: bytes
    envelopes: tuple[SealedEnvelope, ...]

    @property
    def payload_bytes(self) -> int:
        return sum(len(e.data) for e in self.envelopes)


def _stable_hash(*parts: bytes) -> int:
    digest = hashlib.sha256(b"\x00".join(parts)).digest()
    return int.from_bytes(digest[:8], "big")


def group_key(envelope: SealedEnvelope, shards: int, spread: int) -> tuple[str, str, int]:
    """``(region, producer, shard)``: all of a DEK's envelopes share ``spread`` groups at most."""
    bucket = _stable_hash(envelope.envelope_id) % spread if spread > 1 else 0
    shard = _stable_hash(envelope.key_id.encode(), str(bucket).encode()) % shards
    return envelope.region, envelope.producer_id, shard


class _GroupKeyFn:
    """``group_key`` with the shard of each DEK remembered when ``spread`` is 1 (the shard
    is then a function of the DEK alone): no hashing per envelope, the same keys."""

    _MAX_REMEMBERED = 4096

    def __init__(self, shards: int, spread: int) -> None:
        self._shards = shards
        self._spread = spread
        self._shards_by_key: dict[str, int] = {}

    def __call__(self, envelope: SealedEnvelope) -> tuple[tuple[str, str, int], SealedEnvelope]:
        if self._spread > 1:
            return group_key(envelope, self._shards, self._spread), envelope
        shard = self._shards_by_key.get(envelope.key_id)
        if shard is None:
            if len(self._shards_by_key) >= self._MAX_REMEMBERED:
                self._shards_by_key.clear()
            shard = group_key(envelope, self._shards, 1)[2]
            self._shards_by_key[envelope.key_id] = shard
        return (envelope.region, envelope.producer_id, shard), envelope


def batch_id_of(envelopes: Sequence[SealedEnvelope]) -> bytes:
    """16 bytes of SHA-256 over the sorted envelope ids (and digests) of a batch."""
    hasher = hashlib.sha256(_BATCH_ID_DOMAIN)
    for envelope_id, digest in sorted((e.envelope_id, e.digest) for e in envelopes):
        hasher.update(envelope_id)
        hasher.update(digest)
    return hasher.digest()[:16]


def cut_batches(envelopes: Iterable[SealedEnvelope], max_count: int, max_bytes: int
                ) -> list[EnvelopeBatch]:
    """Sort ``envelopes`` and cut them into batches bounded by records and bytes.

    The count bound is spread evenly (``n`` records -> ``ceil(n / max_count)`` batches of
    near-equal size), so no batch is a small remainder that k-anonymity would mostly suppress.
    A record stream counts its records and is never split.
    """
    ordered = sorted(envelopes, key=lambda e: (e.key_id, e.envelope_id, e.digest))
    if not ordered:
        return []
    total = sum(e.records for e in ordered)
    pieces = -(-total // max_count)
    target = -(-total // pieces)
    batches: list[EnvelopeBatch] = []
    current: list[SealedEnvelope] = []
    current_bytes = current_records = 0
    for envelope in ordered:
        size = len(envelope.data)
        if current and (current_records >= target or current_records + envelope.records
                        > max_count or current_bytes + size > max_bytes):
            batches.append(EnvelopeBatch(batch_id_of(current), tuple(current)))
            current, current_bytes, current_records = [], 0, 0
        current.append(envelope)
        current_bytes += size
        current_records += envelope.records
    batches.append(EnvelopeBatch(batch_id_of(current), tuple(current)))
    return batches


class _CutFn(beam.DoFn):
    def __init__(self, max_count: int, max_bytes: int, drop_duplicates: bool) -> None:
        self._max_count = max_count
        self._max_bytes = max_bytes
        self._drop_duplicates = drop_duplicates
        self._duplicates = Metrics.counter(NAMESPACE, DUPLICATES)

    def process(self, group: tuple[object, Iterable[SealedEnvelope]]) -> Iterable[object]:
        _, envelopes = group
        if not self._drop_duplicates:
            yield from cut_batches(envelopes, self._max_count, self._max_bytes)
            return
        unique: dict[tuple[bytes, bytes], SealedEnvelope] = {}
        for envelope in envelopes:
            identity = (envelope.envelope_id, envelope.digest)
            if identity in unique:
                self._duplicates.inc(envelope.records)
                yield TaggedOutput(BatchByDataKey.DUPLICATES, envelope)
            else:
                unique[identity] = envelope
        yield from cut_batches(unique.values(), self._max_count, self._max_bytes)


class BatchByDataKey(beam.PTransform):
    """``SealedEnvelope`` -> ``EnvelopeBatch``: grouped by data key, cut deterministically.

    With ``drop_duplicates`` the result has two outputs, ``BATCHES`` (main) and
    ``DUPLICATES``: exact copies of an envelope (same id and bytes, so same data key and
    group) are dropped inside the group and counted in ``duplicates``, as
    ``DeduplicateEnvelopes`` would over the whole window, without a shuffle of its own.
    """

    BATCHES = "batches"
    DUPLICATES = "duplicates"

    def __init__(self, *, max_count: int = 2000, max_bytes: int = DEFAULT_MAX_BATCH_BYTES,
                 shards: int = DEFAULT_SHARDS, spread: int = 1,
                 drop_duplicates: bool = False) -> None:
        super().__init__()
        if max_count < 1 or max_bytes < 1:
            raise TransformConfigError("batch bounds (count, bytes) must be at least 1")
        if shards < 1 or spread < 1:
            raise TransformConfigError("key shards and spread must be at least 1")
        self._max_count = max_count
        self._max_bytes = max_bytes
        self._shards = shards
        self._spread = spread
        self._drop_duplicates = drop_duplicates

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection | beam.pvalue.DoOutputsTuple:
        shards, spread = self._shards, self._spread
        cut = beam.ParDo(_CutFn(self._max_count, self._max_bytes, self._drop_duplicates))
        if self._drop_duplicates:
            cut = cut.with_outputs(self.DUPLICATES, main=self.BATCHES)
        return (
            pcoll
            | "KeyByDataKey" >> beam.Map(_GroupKeyFn(shards, spread))
            | "GroupByDataKey" >> beam.GroupByKey()
            | "CutBatches" >> cut
        )


class _BundleBatchFn(beam.DoFn):
    """Buffers a bundle's envelopes per window; emits a batch when a bound is reached."""

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self._max_count = max_count
        self._max_bytes = max_bytes
        # per window: (envelopes, [bytes, records])
        self._buffers: dict[BoundedWindow, tuple[list[SealedEnvelope], list[int]]] = {}

    def start_bundle(self) -> None:
        self._buffers = {}

    def process(self, envelope: SealedEnvelope,
                window: BoundedWindow = beam.DoFn.WindowParam) -> Iterable[EnvelopeBatch]:
        envelopes, size = self._buffers.setdefault(window, ([], [0, 0]))
        if envelopes and (size[1] + envelope.records > self._max_count
                          or size[0] + len(envelope.data) > self._max_bytes):
            yield from cut_batches(envelopes, self._max_count, self._max_bytes)
            envelopes.clear()
            size[0] = size[1] = 0
        envelopes.append(envelope)
        size[0] += len(envelope.data)
        size[1] += envelope.records

    def finish_bundle(self) -> Iterable[WindowedValue]:
        buffers, self._buffers = self._buffers, {}
        for window, (envelopes, _) in buffers.items():
            for batch in cut_batches(envelopes, self._max_count, self._max_bytes):
                yield WindowedValue(batch, window.max_timestamp(), [window])


class BundleBatches(beam.PTransform):
    """``SealedEnvelope`` -> ``EnvelopeBatch`` per bundle and window, without waiting."""

    def __init__(self, *, max_count: int = 2000,
                 max_bytes: int = DEFAULT_MAX_BATCH_BYTES) -> None:
        super().__init__()
        if max_count < 1 or max_bytes < 1:
            raise TransformConfigError("batch bounds (count, bytes) must be at least 1")
        self._max_count = max_count
        self._max_bytes = max_bytes

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "BatchPerBundle" >> beam.ParDo(
            _BundleBatchFn(self._max_count, self._max_bytes))
