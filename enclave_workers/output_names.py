"""Deterministic output names: the id and file name an output gets from what went into it.

What it does: ``output_name_id`` digests the batch id and the output's region, producer and
format into 16 bytes, and ``output_file_name`` turns that id (plus a window label, if any)
into ``part-<id as uuid>[-<label>]<suffix of its format>``. Both the in-process confidential
step (``transforms``) and a pool worker (``enclave_workers.pool``) name outputs with these
functions, so the custody statement a TEE signs names the very file Beam later writes, and
a retried or rerun batch gets the same names in either mode. It lives here, not in
``transforms``, because a pool worker must never import ``transforms`` or Beam.

What it does not: no I/O; turning a Beam window into its label stays in
``transforms.windows``.
"""

from __future__ import annotations

import hashlib
import re
import uuid

from .batch_processor import PARQUET_PME, SEALED_ARROW, SealedOutput

__all__ = ["MAX_BATCH_ID_BYTES", "OUTPUT_SUFFIX", "OUTPUT_SUFFIXES", "PME_SUFFIX",
           "OutputNameError", "check_batch_id", "check_window_label", "output_file_name",
           "output_name_id"]

OUTPUT_SUFFIX = ".sbatch"
PME_SUFFIX = ".parquet"
OUTPUT_SUFFIXES = {SEALED_ARROW: OUTPUT_SUFFIX, PARQUET_PME: PME_SUFFIX}
MAX_BATCH_ID_BYTES = 64
_OUTPUT_NAME_DOMAIN = b"sealbeam.output.v1\x00"
_WINDOW_LABEL = re.compile(r"[0-9A-Za-z.:_-]{0,96}")


class OutputNameError(ValueError):
    """A batch id or window label an output cannot be named by."""


def output_name_id(batch_id: bytes, output: SealedOutput) -> bytes:
    """16 bytes naming an output by what went into it: its batch, region, producer, format."""
    hasher = hashlib.sha256(_OUTPUT_NAME_DOMAIN + batch_id)
    for part in (output.region, output.producer_id, output.output_format):
        encoded = part.encode("utf-8")
        hasher.update(len(encoded).to_bytes(4, "big") + encoded)
    return hasher.digest()[:16]


def output_file_name(output: SealedOutput, label: str = "") -> str:
    """``part-<output id as uuid>[-<label>]<suffix of its format>`` (label: a window's)."""
    return (f"part-{uuid.UUID(bytes=output.output_id)}{'-' + label if label else ''}"
            f"{OUTPUT_SUFFIXES[output.output_format]}")


def check_batch_id(batch_id: bytes) -> bytes:
    """``batch_id`` if it can name outputs (1..64 bytes), else ``OutputNameError``."""
    if not 1 <= len(batch_id) <= MAX_BATCH_ID_BYTES:
        raise OutputNameError(f"a batch id is 1..{MAX_BATCH_ID_BYTES} bytes, "
                              f"not {len(batch_id)}")
    return batch_id


def check_window_label(label: str) -> str:
    """``label`` if it is safe inside a file name (letters, digits, ``.:_-``), else raise."""
    if not _WINDOW_LABEL.fullmatch(label):
        raise OutputNameError("a window label is at most 96 of [0-9A-Za-z.:_-]")
    return label
