"""Send each dead letter to the dead-letter sink of its data's region, never to another's.

Usage::

    dead | WriteDeadLettersBySink({"eu": "gs://eu-dl/x", "us": "azfs://acct/us-dl/x"},
                                  unrouted_root="gs://quarantine/q")
    late | WriteDeadLettersBySink(roots, unrouted_root, writer=WriteLateRecords)

A dead letter's region is read from its own sealed bytes (an envelope header, or a PME file's
footer key: ``output_region.sealed_bytes_region``); it is written by ``WriteDeadLetters``
under that region's root (``<root>/dead-letter/dl-*.jsonl``), or by the ``writer`` given (a
PTransform class taking the root: the streaming pipeline's per-bundle dead letters, or its
late records, which carry their sealed bytes the same way). Dead letters whose bytes name
no region (not an envelope), or a region without a dead-letter sink, go to
``unrouted_root``: still sealed, never to another region's sink. Regions sharing one root
(the map derived from ``--output_root``) share one writer.

What it does not: decide what is a dead letter, or open anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import apache_beam as beam

from enclave_workers.batch_processor import DeadLetter

from .dead_letters import WriteDeadLetters
from .errors import TransformConfigError
from .output_region import sealed_bytes_region

__all__ = ["WriteDeadLettersBySink"]


class _SinkIndex:
    """Picklable partition function: a dead letter -> the index of its root."""

    def __init__(self, region_index: Mapping[str, int], unrouted_index: int) -> None:
        self._region_index = dict(region_index)
        self._unrouted = unrouted_index

    def __call__(self, dead_letter: DeadLetter, partitions: int) -> int:
        region = sealed_bytes_region(dead_letter.sealed) if dead_letter.sealed else None
        return self._region_index.get(region or "", self._unrouted)


class WriteDeadLettersBySink(beam.PTransform):
    """``DeadLetter`` (or any element with ``sealed`` bytes) -> files under the dead-letter
    root of its region, written by ``writer``."""

    def __init__(self, roots: Mapping[str, str], unrouted_root: str,
                 writer: Callable[[str], beam.PTransform] = WriteDeadLetters) -> None:
        super().__init__()
        if not unrouted_root or not all(roots.values()):
            raise TransformConfigError("WriteDeadLettersBySink needs a root per region and an "
                                       "unrouted root")
        self._roots = sorted(set(roots.values()) | {unrouted_root})
        index = {root: i for i, root in enumerate(self._roots)}
        self._partition = _SinkIndex({region: index[root] for region, root in roots.items()},
                                     index[unrouted_root])
        self._writer = writer

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        parts = pcoll | "BySink" >> beam.Partition(self._partition, len(self._roots))
        written = [parts[i] | f"Write{i}" >> self._writer(root)
                   for i, root in enumerate(self._roots)]
        return written | "Done" >> beam.Flatten()
