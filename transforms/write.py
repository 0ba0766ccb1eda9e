"""Write sealed feature batches into region-pinned sinks, refusing any other region.

Usage::

    written = routed | WriteRegionPinned("gs://features", allowed_regions={"eu", "us"})
    paths = written[WriteRegionPinned.WRITTEN]           # str, one per file
    refused = written[WriteRegionPinned.DEAD_LETTER]     # DeadLetter (stage "region")

Each sealed batch goes to ``<output_root>/<region>/part-<envelope id as uuid>.sbatch`` through
``apache_beam.io.filesystems.FileSystems`` (local, GCS, Azure Blob ...), first under a hidden
temporary name and then renamed, so a reader never sees half a file and a retried bundle
rewrites the same name. A batch is refused — becomes a dead letter that still carries the
sealed bytes — when its destination is not in ``allowed_regions``, is not the region in its
sealed header, or is not a plain region name. Metrics: ``records_out`` (input envelopes behind
each written batch), ``rows_out``, ``output_files`` and ``output_files.<region>``.

What it does not: it never opens envelopes; a per-region sink that must live in another
bucket or account is a different ``output_root`` per pipeline.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from enclave_workers.batch_processor import STAGE_REGION, DeadLetter, SealedOutput
from envelope import EnvelopeError, read_header

from .errors import TransformConfigError
from .metrics import NAMESPACE, OUTPUT_FILES, RECORDS_OUT, ROWS_OUT, outputs_in_region

__all__ = ["OUTPUT_SUFFIX", "WriteRegionPinned", "is_region_name"]

OUTPUT_SUFFIX = ".sbatch"
_REGION_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62})")


def is_region_name(region: str) -> bool:
    """A region usable as a single path component: lowercase letters, digits, dashes."""
    return bool(_REGION_NAME.fullmatch(region))


def output_file_name(envelope_id: bytes) -> str:
    return f"part-{uuid.UUID(bytes=envelope_id)}{OUTPUT_SUFFIX}"


class _WritePinnedFn(beam.DoFn):
    def __init__(self, output_root: str, allowed_regions: frozenset[str]) -> None:
        self._output_root = output_root
        self._allowed = allowed_regions
        self._records_out = Metrics.counter(NAMESPACE, RECORDS_OUT)
        self._rows_out = Metrics.counter(NAMESPACE, ROWS_OUT)
        self._files = Metrics.counter(NAMESPACE, OUTPUT_FILES)
        self._files_by_region = {r: Metrics.counter(NAMESPACE, outputs_in_region(r))
                                 for r in allowed_regions}

    def _refusal(self, destination: str, output: SealedOutput) -> str | None:
        if destination not in self._allowed:
            return f"destination region {destination!r} is not an allowed region"
        try:
            header, _ = read_header(output.envelope)
        except EnvelopeError as exc:
            return f"output is not a sealed envelope: {exc}"
        if header.region != destination:
            return (f"destination region {destination!r} differs from the sealed "
                    f"region {header.region!r}")
        if len(header.envelope_id) != 16:
            return "envelope id is not 16 bytes"
        return None

    def process(self, element: tuple[str, SealedOutput]) -> Iterable[object]:
        destination, output = element
        refusal = self._refusal(destination, output)
        if refusal is not None:
            yield TaggedOutput(WriteRegionPinned.DEAD_LETTER, DeadLetter(
                _record_id(output), refusal, STAGE_REGION, output.envelope,
                records=output.source_count))
            return
        header, _ = read_header(output.envelope)
        name = output_file_name(header.envelope_id)
        final_path = FileSystems.join(self._output_root, destination, name)
        temp_path = FileSystems.join(self._output_root, destination, f".{name}.tmp")
        writer = FileSystems.create(temp_path, mime_type="application/octet-stream",
                                    compression_type="uncompressed")
        try:
            writer.write(output.envelope)
        finally:
            writer.close()
        if FileSystems.exists(final_path):
            FileSystems.delete([final_path])
        FileSystems.rename([temp_path], [final_path])
        self._records_out.inc(output.source_count)
        self._rows_out.inc(output.row_count)
        self._files.inc()
        self._files_by_region[destination].inc()
        yield final_path


def _record_id(output: SealedOutput) -> str:
    try:
        return read_header(output.envelope)[0].envelope_id.hex()
    except EnvelopeError:
        return "unparsed-output"


class WriteRegionPinned(beam.PTransform):
    """``(destination_region, SealedOutput)`` -> written paths; refusals as dead letters."""

    WRITTEN = "written"
    DEAD_LETTER = "dead_letter"

    def __init__(self, output_root: str, allowed_regions: Iterable[str]) -> None:
        super().__init__()
        allowed = frozenset(allowed_regions)
        if not allowed:
            raise TransformConfigError("WriteRegionPinned needs at least one allowed region")
        bad = sorted(r for r in allowed if not is_region_name(r))
        if bad:
            raise TransformConfigError(f"not a region name: {', '.join(map(repr, bad))}")
        if not output_root:
            raise TransformConfigError("WriteRegionPinned needs an output_root")
        self._fn = _WritePinnedFn(output_root, allowed)

    def expand(self, pcoll: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return pcoll | "WriteSealed" >> beam.ParDo(self._fn).with_outputs(
            self.DEAD_LETTER, main=self.WRITTEN)
