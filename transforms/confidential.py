"""The confidential step: open, featurize (with a feature spec) and reseal inside the TEE.

Usage::

    spec = FeatureSpec.load("features.yaml")          # or default_feature_spec()
    processed = parsed[ParseSealed.SEALED] | ConfidentialProcess(
        broker_url="https://broker.internal:8443",
        tee=TeeSettings("simulated-sev-snp", dev_tee_dir=".sealbeam/dev-tee"),
        spec=spec,
        output_format="parquet-pme",                   # default "sealed-arrow"
    )
    outputs = processed[ConfidentialProcess.SEALED]        # SealedOutput
    dead = processed[ConfidentialProcess.DEAD_LETTER]       # DeadLetter

The spec is validated and compiled when the transform is built (a bad spec fails there, not
on a worker), travels to the workers as its plain JSON document, and is compiled once per
worker in ``setup``; the worker checks that its compiled fingerprint is the one the pipeline
was built with. Elements are grouped with ``beam.BatchElements`` (not ``GroupIntoBatches``,
which needs keyed state and forces the legacy runner). Each worker process holds one
``KeySession`` per (broker, TEE, limits, spec, output format), shared by its threads through
``apache_beam.utils.shared.Shared``: it attests once, fetches each data key once, and names
the spec's fingerprint in every output-key request (``session.py``). For ``parquet-pme`` the
session hands out a fresh output DEK per request, so each file's two master keys differ.
``enclave_workers.batch_processor`` does the work. Metrics: ``broker_calls``,
``rows_suppressed`` (k-anonymity), ``confidential_batch_size``.

What it does not: no file I/O, no routing; keys stay in the worker's memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils.shared import Shared

from enclave_workers.batch_processor import (
    OUTPUT_FORMATS,
    PARQUET_PME,
    SEALED_ARROW,
    BatchProcessor,
)
from enclave_workers.features import CompiledSpec, FeatureError, FeatureSpec, compile_spec
from enclave_workers.features.pme import check_column_keys, column_keys_for_spec
from enclave_workers.key_session import KeySession

from .broker_identity import BrokerTrust, resolve_broker_trust
from .errors import TransformConfigError
from .metrics import BROKER_CALLS, NAMESPACE, ROWS_SUPPRESSED
from .session import make_key_session
from .tee import SessionLimits, TeeSettings

__all__ = ["ConfidentialProcess", "compile_for_workers"]

PME_OUTPUT_KEY_MAX_ENVELOPES = 1   # a fresh DEK per master key: each PME file's two differ


def compile_for_workers(spec: FeatureSpec) -> tuple[dict[str, Any], CompiledSpec]:
    """The spec's plain document (what is pickled to workers) and its compiled form."""
    document = spec.to_json_document()
    try:
        compiled = compile_spec(FeatureSpec.from_dict(document, source=spec.source))
    except FeatureError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise TransformConfigError(" ".join(lines)) from None
    return document, compiled


def _check_pme_assignment(compiled: CompiledSpec) -> None:
    """Fail at construction, not on a worker, when PME cannot name the spec's columns."""
    try:
        check_column_keys(compiled.output_schema, column_keys_for_spec(
            compiled, pseudonym_key_id="pseudonyms", features_key_id="features"))
    except FeatureError as exc:
        raise TransformConfigError(f"parquet-pme cannot encrypt this spec's output: {exc}"
                                   ) from None


class _ConfidentialProcessFn(beam.DoFn):
    def __init__(self, broker_url: str, tee: TeeSettings, spec_document: dict[str, Any],
                 spec_source: str | None, fingerprint: str, output_format: str,
                 limits: SessionLimits, broker_trust: BrokerTrust | None = None) -> None:
        self._broker_url = broker_url
        self._broker_trust = broker_trust
        self._tee = tee
        self._spec_document = spec_document
        self._spec_source = spec_source
        self._fingerprint = fingerprint
        self._output_format = output_format
        self._limits = limits
        self._shared_session = Shared()
        self._broker_calls = Metrics.counter(NAMESPACE, BROKER_CALLS)
        self._rows_suppressed = Metrics.counter(NAMESPACE, ROWS_SUPPRESSED)
        self._batch_sizes = Metrics.distribution(NAMESPACE, "confidential_batch_size")
        self._processor: BatchProcessor | None = None

    def _session_tag(self) -> str:
        return repr((self._broker_url, self._tee, self._limits, self._fingerprint,
                     self._output_format))

    def _make_session(self) -> KeySession:
        counter = self._broker_calls
        return make_key_session(
            self._broker_url, self._tee, self._limits, spec_fingerprint=self._fingerprint,
            output_key_max_envelopes=(PME_OUTPUT_KEY_MAX_ENVELOPES
                                      if self._output_format == PARQUET_PME else None),
            on_broker_call=lambda _kind: counter.inc(), broker_trust=self._broker_trust)

    def setup(self) -> None:
        compiled = compile_spec(FeatureSpec.from_dict(self._spec_document,
                                                      source=self._spec_source))
        if compiled.fingerprint != self._fingerprint:
            raise TransformConfigError("the worker compiled the feature spec to another "
                                       "fingerprint than the pipeline was built with")
        session = self._shared_session.acquire(self._make_session, tag=self._session_tag())
        self._processor = BatchProcessor(session, compiled, output_format=self._output_format)

    def process(self, batch: Sequence[bytes]) -> Iterable[object]:
        assert self._processor is not None, "setup() creates the processor"
        self._batch_sizes.update(len(batch))
        result = self._processor.process(list(batch))
        self._rows_suppressed.inc(result.rows_suppressed)
        yield from result.outputs
        for dead_letter in result.dead_letters:
            yield TaggedOutput(ConfidentialProcess.DEAD_LETTER, dead_letter)


class ConfidentialProcess(beam.PTransform):
    """Sealed envelopes -> feature outputs (``SealedOutput``) and dead letters."""

    SEALED = "sealed"
    DEAD_LETTER = "dead_letter"

    def __init__(self, broker_url: str, tee: TeeSettings, spec: FeatureSpec, *,
                 output_format: str = SEALED_ARROW, limits: SessionLimits | None = None,
                 min_batch_size: int = 1, max_batch_size: int = 2000,
                 broker_trust: BrokerTrust | None = None) -> None:
        """``broker_trust``: the broker's public identity key the workers pin (by default
        ``broker-identity.pub.pem`` beside the simulated TEE's dev chain) and its TLS trust."""
        super().__init__()
        if not broker_url:
            raise TransformConfigError("ConfidentialProcess needs a broker_url")
        if not 1 <= min_batch_size <= max_batch_size:
            raise TransformConfigError(
                "batch sizes must satisfy 1 <= min_batch_size <= max_batch_size")
        if output_format not in OUTPUT_FORMATS:
            raise TransformConfigError(f"output format must be one of "
                                       f"{', '.join(OUTPUT_FORMATS)}, not {output_format!r}")
        if not isinstance(spec, FeatureSpec):
            raise TransformConfigError(f"spec must be a FeatureSpec, not {type(spec).__name__}")
        document, compiled = compile_for_workers(spec)
        if output_format == PARQUET_PME:
            _check_pme_assignment(compiled)
        self.compiled = compiled
        self._fn = _ConfidentialProcessFn(broker_url, tee, document, spec.source,
                                          compiled.fingerprint, output_format,
                                          limits or SessionLimits(),
                                          resolve_broker_trust(broker_trust, tee))
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
