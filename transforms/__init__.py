"""sealbeam's Beam transforms: read sealed input, process it inside a TEE, write it pinned.

A batch pipeline reads like this (``pipelines/batch.py`` is the full one)::

    read = p | ReadSealedRecords("in/*.sealed")           # byte ranges, spread (Reshuffle)
    parsed = read[ReadSealedRecords.SEALED] | ParseSealed()   # SealedEnvelope
    unique = parsed[ParseSealed.SEALED] | DeduplicateEnvelopes()
    processed = (unique[DeduplicateEnvelopes.UNIQUE]
                 | ConfidentialProcess(broker_url, tee, spec))   # batched by data key
    written = (processed[ConfidentialProcess.SEALED]
               | beam.Reshuffle()                               # checkpoint before writing
               | RouteByRegion()
               | WriteRegionPinned(output_root, allowed_regions={"eu", "us"}))
    ((read[ReadSealedRecords.DEAD_LETTER], parsed[ParseSealed.DEAD_LETTER],
      processed[ConfidentialProcess.DEAD_LETTER], written[WriteRegionPinned.DEAD_LETTER])
     | beam.Flatten() | WriteDeadLetters(output_root))

Every transform sends what it cannot handle to its ``DEAD_LETTER`` output as data (still
sealed, with a reason) and the pipeline goes on; the ``sealbeam`` metrics namespace then
reconciles ``records_in == records_out + dead_letters + duplicates``. No step assumes
bounded input. Output and dead-letter files are named by what went into them, so retries and
reruns rewrite the same names.

This package never imports ``pipelines``; decryption happens only in ``enclave_workers``.
"""

from __future__ import annotations

from enclave_workers.batch_processor import OUTPUT_FORMATS, DeadLetter, SealedOutput
from enclave_workers.features import FeatureSpec

from .batching import BatchByDataKey, EnvelopeBatch
from .confidential import ConfidentialProcess
from .dead_letters import WriteDeadLetters, dead_letter_to_json
from .dedupe import DeduplicateEnvelopes
from .errors import TransformConfigError, TransformError
from .parse import ParseSealed
from .read import DecodeSealedLines, ReadSealedRecords
from .routing import RouteByRegion
from .sealed import SealedEnvelope
from .tee import SessionLimits, TeeSettings
from .write import WriteRegionPinned

__all__ = [
    "OUTPUT_FORMATS",
    "BatchByDataKey",
    "ConfidentialProcess",
    "DeadLetter",
    "DecodeSealedLines",
    "DeduplicateEnvelopes",
    "EnvelopeBatch",
    "FeatureSpec",
    "ParseSealed",
    "ReadSealedRecords",
    "RouteByRegion",
    "SealedEnvelope",
    "SealedOutput",
    "SessionLimits",
    "TeeSettings",
    "TransformConfigError",
    "TransformError",
    "WriteDeadLetters",
    "WriteRegionPinned",
    "dead_letter_to_json",
]
