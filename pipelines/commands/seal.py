"""``sealbeam seal``: a partner seals a JSONL or Parquet file into sealed records or a batch.

Sealed records come in two profiles: ``--profile 2``, the default (a ``record-stream``
envelope per ``--records-per-stream`` records, one line each: a 44-byte frame a record
besides its plaintext; docs/FORMAT.md 13), and ``--profile 1`` (a v1 record envelope per
line: a whole header, about 300 bytes, a record).

``--input -`` reads standard input (JSONL unless --input-format says parquet); ``--output -``
writes the sealed lines to standard output, and the JSON report then goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from keybroker.kms.local import LocalKeyring
from pipelines.errors import PipelineError
from pipelines.progress import track
from pipelines.sealing import (
    DEFAULT_RECORD_PROFILE,
    DEFAULT_RECORDS_PER_STREAM,
    INPUT_FORMATS,
    MAX_RECORDS_PER_STREAM,
    OUTPUT_KINDS,
    RECORD_PROFILES,
    seal_file,
)
from pipelines.stdio import STDIO, input_path, output_path
from transforms.event_time import EventTimeError, parse_event_time


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "seal", help="seal a partner file (JSONL or Parquet) into envelopes",
        description="Seal partner records under a fresh DEK wrapped by the region's KEK. "
                    "Writes one base64 envelope per line. '-' as --input reads standard "
                    "input, as --output writes standard output.")
    parser.add_argument("--input", required=True,
                        help="JSONL or Parquet file; '-' for standard input")
    parser.add_argument("--output", required=True,
                        help="sealed file to write; '-' for standard output")
    parser.add_argument("--region", required=True, help="home region of the data (e.g. eu)")
    parser.add_argument("--producer", required=True, help="producer (partner) id, e.g. acme")
    parser.add_argument("--state", type=Path, default=Path(".sealbeam"),
                        help="state directory holding keyring.json (default .sealbeam)")
    parser.add_argument("--kind", choices=OUTPUT_KINDS, default="records",
                        help="sealed records (default) or one sealed Arrow batch")
    parser.add_argument("--records-per-key", type=int, default=0,
                        help="records per DEK; 0 = one DEK for the whole file")
    parser.add_argument("--profile", type=int, choices=RECORD_PROFILES,
                        default=DEFAULT_RECORD_PROFILE,
                        help="sealed-record profile (--kind records): 2 = record streams, "
                             "one envelope per --records-per-stream records with a "
                             "per-record nonce and tag (44 bytes a record besides its "
                             "plaintext); 1 = one v1 record envelope per line (about 300 "
                             f"bytes a record) (default {DEFAULT_RECORD_PROFILE})")
    parser.add_argument("--records-per-stream", type=int, default=DEFAULT_RECORDS_PER_STREAM,
                        help=f"records per record stream with profile 2 (1 to "
                             f"{MAX_RECORDS_PER_STREAM}; a new DEK also starts a stream; "
                             f"default {DEFAULT_RECORDS_PER_STREAM})")
    parser.add_argument("--input-format", choices=INPUT_FORMATS, default=None,
                        help="input format (default: from the file suffix; jsonl for '-')")
    parser.add_argument("--event-time", default=None,
                        help="when the records happened, stated in every header for streaming "
                             "windows: YYYY-MM-DDTHH:MM:SS.mmmZ (UTC; default: now)")
    parser.set_defaults(func=run_seal)


def run_seal(args: argparse.Namespace) -> int:
    keyring = LocalKeyring.open(args.state / "keyring.json")
    event_time = None
    if args.event_time is not None:
        try:
            event_time = float(parse_event_time(args.event_time))
        except EventTimeError as exc:
            raise PipelineError(f"--event-time: {exc}") from None
    input_format = args.input_format or ("jsonl" if args.input == STDIO else None)
    with input_path(args.input) as source, output_path(args.output) as target, \
            track("seal") as progress:
        report = seal_file(source, target, keyring=keyring, region=args.region,
                           producer_id=args.producer, output_kind=args.kind,
                           records_per_key=args.records_per_key, input_format=input_format,
                           event_time=event_time, on_sealed=progress.update,
                           profile=args.profile, records_per_stream=args.records_per_stream)
    document = asdict(report)
    if args.output == STDIO:
        document["output_path"] = STDIO
    print(json.dumps(document), file=sys.stderr if args.output == STDIO else sys.stdout)
    return 0
