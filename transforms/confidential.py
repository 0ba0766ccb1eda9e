"""The confidential step: open, featurize and reseal sealed envelopes inside the TEE.

Usage::

    processed = parsed[ParseSealed.SEALED] | ConfidentialProcess(
        broker_url="https://broker.internal:8443",
        tee=TeeSettings("simulated-sev-snp", dev_tee_dir=".sealbeam/dev-tee"),
        features=FeatureSettings(amount_mean=120.0, amount_std=80.0),
    )
    sealed_batches = processed[ConfidentialProcess.SEALED]   # SealedOutput
    dead = processed[ConfidentialProcess.DEAD_LETTER]         # DeadLetter

Elements are grouped with ``beam.BatchElements`` (not ``GroupIntoBatches``, which needs keyed
state and forces the legacy runner), which works on bounded and unbounded input alike. Each
worker process holds one ``KeySession`` (shared by its threads through
``apache_beam.utils.shared.Shared``) created in ``setup``: it attests once and fetches each
data key once; ``enclave_workers.batch_processor`` does the work. Broker calls are counted in
the ``broker_calls`` metric.

What it does not: no file I/O, no routing; keys stay in the worker's memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils.shared import Shared

from enclave_workers.basic_features import FeatureSettings
from enclave_workers.batch_processor import BatchProcessor
from enclave_workers.key_session import KeySession
from keybroker.client import BrokerClient

from .errors import TransformConfigError
from .metrics import BROKER_CALLS, NAMESPACE
from .tee import SessionLimits, TeeSettings, make_evidence_provider

__all__ = ["ConfidentialProcess"]


class _ConfidentialProcessFn(beam.DoFn):
    def __init__(self, broker_url: str, tee: TeeSettings, features: FeatureSettings,
                 limits: SessionLimits) -> None:
        self._broker_url = broker_url
        self._tee = tee
        self._features = features
        self._limits = limits
        self._shared_session = Shared()
        self._broker_calls = Metrics.counter(NAMESPACE, BROKER_CALLS)
        self._batch_sizes = Metrics.distribution(NAMESPACE, "confidential_batch_size")
        self._processor: BatchProcessor | None = None

    def _session_tag(self) -> str:
        return repr((self._broker_url, self._tee, self._limits))

    def _make_session(self) -> KeySession:
        counter = self._broker_calls
        return KeySession(
            BrokerClient(self._broker_url),
            make_evidence_provider(self._tee),
            key_ttl_s=self._limits.key_ttl_s,
            max_uses_per_key=self._limits.max_uses_per_key,
            max_cached_keys=self._limits.max_cached_keys,
            output_key_max_envelopes=self._limits.output_key_max_envelopes,
            on_broker_call=lambda _kind: counter.inc(),
        )

    def setup(self) -> None:
        session = self._shared_session.acquire(self._make_session, tag=self._session_tag())
        self._processor = BatchProcessor(session, self._features)

    def process(self, batch: Sequence[bytes]) -> Iterable[object]:
        assert self._processor is not None, "setup() creates the processor"
        self._batch_sizes.update(len(batch))
        result = self._processor.process(list(batch))
        yield from result.outputs
        for dead_letter in result.dead_letters:
            yield TaggedOutput(ConfidentialProcess.DEAD_LETTER, dead_letter)


class ConfidentialProcess(beam.PTransform):
    """Sealed envelopes -> sealed feature batches (``SealedOutput``) and dead letters."""

    SEALED = "sealed"
    DEAD_LETTER = "dead_letter"

    def __init__(self, broker_url: str, tee: TeeSettings, features: FeatureSettings, *,
                 limits: SessionLimits | None = None, min_batch_size: int = 1,
                 max_batch_size: int = 2000) -> None:
        super().__init__()
        if not broker_url:
            raise TransformConfigError("ConfidentialProcess needs a broker_url")
        if not 1 <= min_batch_size <= max_batch_size:
            raise TransformConfigError(
                "batch sizes must satisfy 1 <= min_batch_size <= max_batch_size")
        self._fn = _ConfidentialProcessFn(broker_url, tee, features, limits or SessionLimits())
        self._min_batch_size = min_batch_size
        self._max_batch_size = max_batch_size

    def expand(self, pcoll: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return (
            pcoll
            | "Batch" >> beam.BatchElements(min_batch_size=self._min_batch_size,
                                            max_batch_size=self._max_batch_size)
            | "OpenFeaturizeReseal" >> beam.ParDo(self._fn).with_outputs(
                self.DEAD_LETTER, main=self.SEALED)
        )
