"""sealbeam's Beam transforms: read sealed input, process it inside a TEE, write it pinned.

A batch pipeline reads like this (``pipelines/batch.py`` is the full one)::

    read = p | ReadSealedRecords("in/*.sealed")
    parsed = read[ReadSealedRecords.SEALED] | ParseSealed()
    processed = parsed[ParseSealed.SEALED] | ConfidentialProcess(broker_url, tee, spec)
    written = (processed[ConfidentialProcess.SEALED]
               | RouteByRegion()
               | WriteRegionPinned(output_root, allowed_regions={"eu", "us"}))
    ((read[ReadSealedRecords.DEAD_LETTER], parsed[ParseSealed.DEAD_LETTER],
      processed[ConfidentialProcess.DEAD_LETTER], written[WriteRegionPinned.DEAD_LETTER])
     | beam.Flatten() | WriteDeadLetters(output_root))

Every transform sends what it cannot handle to its ``DEAD_LETTER`` output as data (still
sealed, with a reason) and the pipeline goes on; the ``sealbeam`` metrics namespace then
reconciles ``records_in == records_out + dead_letters``. No step assumes bounded input.

This package never imports ``pipelines``; decryption happens only in ``enclave_workers``.
"""

from __future__ import annotations

from enclave_workers.batch_processor import OUTPUT_FORMATS, DeadLetter, SealedOutput
from enclave_workers.features import FeatureSpec

from .confidential import ConfidentialProcess
from .dead_letters import WriteDeadLetters, dead_letter_to_json
from .errors import TransformConfigError, TransformError
from .parse import ParseSealed
from .read import DecodeSealedLines, ReadSealedRecords
from .routing import RouteByRegion
from .tee import SessionLimits, TeeSettings
from .write import WriteRegionPinned

__all__ = [
    "OUTPUT_FORMATS",
    "ConfidentialProcess",
    "DeadLetter",
    "DecodeSealedLines",
    "FeatureSpec",
    "ParseSealed",
    "ReadSealedRecords",
    "RouteByRegion",
    "SealedOutput",
    "SessionLimits",
    "TeeSettings",
    "TransformConfigError",
    "TransformError",
    "WriteDeadLetters",
    "WriteRegionPinned",
    "dead_letter_to_json",
]
