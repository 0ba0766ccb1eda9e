"""Write feature outputs into region-pinned sinks, refusing any other region.

Usage::

    written = routed | WriteRegionPinned("gs://features", allowed_regions={"eu", "us"})
    written = routed | WriteRegionPinned({"eu": "gs://eu-bucket/f", "us": "azfs://acct/us/f"},
                                         allowed_regions={"eu", "us"},
                                         keks={"eu": "gcp-kms://...", "us": "azure-kv://..."})
    paths = written[WriteRegionPinned.WRITTEN]           # str, one per file
    refused = written[WriteRegionPinned.DEAD_LETTER]     # DeadLetter (stage "region")

Each output goes to ``<output_root>/<region>/part-<output id as uuid><suffix>`` (``.sbatch``
for a sealed batch envelope, ``.parquet`` for PME Parquet) -- or, given a mapping of region
to sink root (the residency map's sinks), to ``<sink of its region>/part-...`` --, with the
window's UTC bounds before the suffix in an interval window (``part-<uuid>-<start>-<end>.sbatch``),
through ``apache_beam.io.filesystems.FileSystems`` (local, GCS, Azure Blob ...). The output id
is a digest of what went into the output (``ConfidentialProcess``), so a retried bundle or a
rerun of the job writes the same name again: exactly-once files over at-least-once execution.
An output's signed custody statement (``SealedOutput.statement``) is committed beside it as
``<output name>.intoto.json`` the same way.

The commit (``commit_file``) writes a hidden temporary name derived from the final one
(``.<name>.tmp``: a retry overwrites its own leftover), then renames it over the final name;
when a filesystem's rename will not replace an existing file, the old file is deleted and the
rename tried once more. It never asks ``FileSystems.exists`` first (on Azure Blob that raises
for a missing blob). When writing or renaming fails, the temporary file is deleted before the
error is raised, so a failed attempt leaves no orphan; ``clean_temporary_files`` removes what a
killed worker left behind (the batch pipeline runs it after every write).

An output is refused — becomes a dead letter that still carries the
(encrypted) bytes — when its destination is not in ``allowed_regions``, is not the region
whose key the output needs (its sealed header, or its PME footer key: ``output_region``), or
is not a plain region name, has no sink in the mapping ("no sink in the residency map"), or
its key is wrapped under another KEK than ``keks`` names for the region. Metrics:
``records_out`` (input envelopes behind each written output), ``rows_out``, ``output_files``
and ``output_files.<region>``.

What it does not: it never opens envelopes, and never falls back to another region's sink;
where each sink really is was checked before the run (``pipelines.preflight``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping

import apache_beam as beam
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import BoundedWindow

from enclave_workers.batch_processor import (
    STAGE_REGION,
    DeadLetter,
    SealedOutput,
)
from enclave_workers.output_names import OUTPUT_SUFFIX, OUTPUT_SUFFIXES, PME_SUFFIX
from enclave_workers.output_names import output_file_name as _labelled_file_name

from .errors import TransformConfigError, TransformError
from .metrics import NAMESPACE, OUTPUT_FILES, RECORDS_OUT, ROWS_OUT, outputs_in_region
from .output_region import output_key
from .windows import window_label

__all__ = ["OUTPUT_SUFFIX", "OUTPUT_SUFFIXES", "PME_SUFFIX", "STATEMENT_SUFFIX", "TEMP_PREFIX",
           "TEMP_SUFFIX", "WriteRegionPinned", "clean_temporary_files", "commit_file",
           "is_region_name", "output_file_name", "statement_file_name"]

TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"

STATEMENT_SUFFIX = ".intoto.json"
_REGION_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62})")


def is_region_name(region: str) -> bool:
    """A region usable as a single path component: lowercase letters, digits, dashes."""
    return bool(_REGION_NAME.fullmatch(region))


def output_file_name(output: SealedOutput, window: BoundedWindow | None = None) -> str:
    """``part-<output id as uuid>[-<window start>-<window end>]<suffix of its format>``."""
    return _labelled_file_name(output, window_label(window))


def statement_file_name(output_name: str) -> str:
    """The custody statement's name beside an output: ``<output name>.intoto.json``."""
    return f"{output_name}{STATEMENT_SUFFIX}"


def _delete_quietly(path: str) -> None:
    with contextlib.suppress(BeamIOError):   # not there (or already gone): nothing to clean
        FileSystems.delete([path])


def commit_file(directory: str, name: str, chunks: Iterable[bytes], mime_type: str) -> str:
    """Write ``chunks`` to ``directory/name`` through a temporary name; returns the path.

    The temporary name is derived from ``name``, so a retry reuses (overwrites) it; on any
    failure it is deleted before the error propagates.
    """
    final_path = FileSystems.join(directory, name)
    temp_path = FileSystems.join(directory, f"{TEMP_PREFIX}{name}{TEMP_SUFFIX}")
    try:
        writer = FileSystems.create(temp_path, mime_type=mime_type,
                                    compression_type="uncompressed")
        try:
            for chunk in chunks:
                writer.write(chunk)
        finally:
            writer.close()
        try:
            FileSystems.rename([temp_path], [final_path])
        except BeamIOError:
            # A filesystem whose rename does not replace: drop the earlier copy, try once more.
            _delete_quietly(final_path)
            FileSystems.rename([temp_path], [final_path])
    except BaseException:
        _delete_quietly(temp_path)
        raise
    return final_path


def clean_temporary_files(directories: Iterable[str]) -> list[str]:
    """Delete the temporary files (``.*.tmp``) a killed writer left in ``directories``."""
    leftovers: list[str] = []
    for directory in directories:
        pattern = FileSystems.join(directory, f"{TEMP_PREFIX}*{TEMP_SUFFIX}")
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except BeamIOError:
            continue                       # the directory does not exist: nothing left there
        leftovers.extend(m.path for m in matched)
    for path in leftovers:
        _delete_quietly(path)
    return leftovers


class _WritePinnedFn(beam.DoFn):
    def __init__(self, output_root: str | Mapping[str, str], allowed_regions: frozenset[str],
                 keks: Mapping[str, str]) -> None:
        self._output_root = output_root if isinstance(output_root, str) else dict(output_root)
        self._allowed = allowed_regions
        self._keks = dict(keks)
        self._records_out = Metrics.counter(NAMESPACE, RECORDS_OUT)
        self._rows_out = Metrics.counter(NAMESPACE, ROWS_OUT)
        self._files = Metrics.counter(NAMESPACE, OUTPUT_FILES)
        self._files_by_region = {r: Metrics.counter(NAMESPACE, outputs_in_region(r))
                                 for r in allowed_regions}

    def _sink_root(self, destination: str) -> str | None:
        if isinstance(self._output_root, str):
            return FileSystems.join(self._output_root, destination)
        return self._output_root.get(destination)

    def _refusal(self, destination: str, output: SealedOutput) -> str | None:
        if destination not in self._allowed:
            return f"destination region {destination!r} is not an allowed region"
        if self._sink_root(destination) is None:
            return f"region {destination!r} has no sink in the residency map"
        if output.output_format not in OUTPUT_SUFFIXES:
            return f"unknown output format {output.output_format!r}"
        try:
            key_region, kek_uri = output_key(output)
        except TransformError as exc:
            return str(exc)
        if key_region != destination:
            return (f"destination region {destination!r} differs from the sealed "
                    f"region {key_region!r}")
        expected_kek = self._keks.get(destination)
        if expected_kek is not None and kek_uri != expected_kek:
            return (f"output key of region {destination!r} is wrapped under {kek_uri!r}, not "
                    f"the region's KEK {expected_kek!r}")
        if len(output.output_id) != 16:
            return "output id is not 16 bytes"
        return None

    def process(self, element: tuple[str, SealedOutput],
                window: BoundedWindow = beam.DoFn.WindowParam) -> Iterable[object]:
        destination, output = element
        refusal = self._refusal(destination, output)
        if refusal is not None:
            yield TaggedOutput(WriteRegionPinned.DEAD_LETTER, DeadLetter(
                _record_id(output), refusal, STAGE_REGION, output.payload,
                records=output.source_count))
            return
        root = self._sink_root(destination)
        assert root is not None  # _refusal checked it
        name = output_file_name(output, window)
        final_path = commit_file(root, name, [output.payload], "application/octet-stream")
        if output.statement:
            # Beside the output, same commit (a retry rewrites both names); written second,
            # so a statement never stands beside a missing output.
            commit_file(root, statement_file_name(name), [output.statement],
                        "application/json")
        self._records_out.inc(output.source_count)
        self._rows_out.inc(output.row_count)
        self._files.inc()
        self._files_by_region[destination].inc()
        yield final_path


def _record_id(output: SealedOutput) -> str:
    return output.output_id.hex() if output.output_id else "unnamed-output"


class WriteRegionPinned(beam.PTransform):
    """``(destination_region, SealedOutput)`` -> written paths; refusals as dead letters."""

    WRITTEN = "written"
    DEAD_LETTER = "dead_letter"

    def __init__(self, output_root: str | Mapping[str, str], allowed_regions: Iterable[str],
                 keks: Mapping[str, str] | None = None) -> None:
        """``output_root``: one root (``<root>/<region>/``) or a region -> sink root mapping;
        ``keks``: region -> the KEK URI its outputs must be wrapped under (optional)."""
        super().__init__()
        allowed = frozenset(allowed_regions)
        if not allowed:
            raise TransformConfigError("WriteRegionPinned needs at least one allowed region")
        bad = sorted(r for r in allowed if not is_region_name(r))
        if bad:
            raise TransformConfigError(f"not a region name: {', '.join(map(repr, bad))}")
        if not output_root or (not isinstance(output_root, str)
                               and not all(output_root.values())):
            raise TransformConfigError("WriteRegionPinned needs an output_root or a sink per "
                                       "mapped region")
        self._fn = _WritePinnedFn(output_root, allowed, keks or {})

    def expand(self, pcoll: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return pcoll | "WriteSealed" >> beam.ParDo(self._fn).with_outputs(
            self.DEAD_LETTER, main=self.WRITTEN)
