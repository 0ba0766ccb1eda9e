"""Steps the pipeline tests put after the confidential step (``after_confidential``).

They live in an importable module, not in a test file, because multi-processing workers
unpickle them by reference. Both keep their memory in files under a directory the test owns,
so they work across worker processes and across runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import apache_beam as beam

from enclave_workers.batch_processor import SealedOutput


class MarkWorker(beam.DoFn):
    """Leaves ``<pid>-<output id>`` in ``directory`` for every output that passes."""

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def process(self, output: SealedOutput) -> Iterable[SealedOutput]:
        Path(self._directory, f"{os.getpid()}-{output.output_id.hex()}").touch()
        yield output


class FailFirstAttempt(beam.DoFn):
    """Fails the bundle on the first attempt at the first output it sees and at every output
    whose id's first byte is even; a marker file per output in ``directory`` says the attempt
    was made, so the next attempt passes."""

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def process(self, output: SealedOutput) -> Iterable[SealedOutput]:
        marker = Path(self._directory, output.output_id.hex())
        first = Path(self._directory, "first-failure")
        if not marker.exists() and (output.output_id[0] % 2 == 0 or not first.exists()):
            first.touch()
            marker.touch()
            raise RuntimeError(f"injected failure before writing {output.output_id.hex()}")
        yield output
