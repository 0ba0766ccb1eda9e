"""Names of the Beam metrics every sealbeam transform reports, in one place.

What it does: fixes the namespace and counter names that pipelines query to reconcile a run
(``records_in == records_out + dead_letters``). It creates no metrics itself: each DoFn creates
its counters in ``__init__``, as Beam's own I/O connectors do.
"""

from __future__ import annotations

NAMESPACE = "sealbeam"
RECORDS_IN = "records_in"            # input envelopes (lines / messages) seen
RECORDS_OUT = "records_out"          # input envelopes whose features were written
DEAD_LETTERS = "dead_letters"        # input envelopes that ended as dead letters
BROKER_CALLS = "broker_calls"        # calls from key sessions to the key broker
ROWS_OUT = "rows_out"                # feature rows written
OUTPUT_FILES = "output_files"        # sealed batch files written


def outputs_in_region(region: str) -> str:
    """Counter of sealed batch files written to one region."""
    return f"output_files.{region}"
