"""Names of the Beam metrics every sealbeam transform reports, in one place.

What it does: fixes the namespace and counter names that pipelines query to reconcile a run
(``records_in == records_out + dead_letters + duplicates``; rows are reported beside it). It
creates no metrics itself: each DoFn creates its counters in ``__init__``, as Beam's own I/O
connectors do.
"""

from __future__ import annotations

NAMESPACE = "sealbeam"
RECORDS_IN = "records_in"            # input envelopes (lines / messages) seen
RECORDS_OUT = "records_out"          # input envelopes accounted for by written outputs
DEAD_LETTERS = "dead_letters"        # input envelopes that ended as dead letters
DUPLICATES = "duplicates"            # exact copies of an envelope already seen (dedupe.py)
LATE = "late"                        # streaming: records whose window had closed (event_time.py)
DEAD_LETTER_ROWS = "dead_letter_rows"  # rows resealed into dead letters from batch envelopes
BROKER_CALLS = "broker_calls"        # calls from key sessions to the key broker
BROKER_RETRIES = "broker_retries"    # confidential batches retried while the broker was down
ROWS_OUT = "rows_out"                # feature rows written
ROWS_SUPPRESSED = "rows_suppressed"  # rows the spec's k-anonymity left out of the outputs
OUTPUT_FILES = "output_files"        # output files written (sealed batches or PME Parquet)
INPUT_FILES = "input_files"          # streaming file drop: files the feed emitted (counter)
INPUT_FILE_NAMES = "input_file_names"  # the same files' paths (a string set, for custody)


def outputs_in_region(region: str) -> str:
    """Counter of output files written to one region."""
    return f"output_files.{region}"
