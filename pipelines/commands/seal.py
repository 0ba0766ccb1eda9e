"""``sealbeam seal``: a partner seals a JSONL or Parquet file into sealed records or a batch."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from keybroker.kms.local import LocalKeyring
from pipelines.errors import PipelineError
from pipelines.sealing import INPUT_FORMATS, OUTPUT_KINDS, seal_file
from transforms.event_time import EventTimeError, parse_event_time


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "seal", help="seal a partner file (JSONL or Parquet) into envelopes",
        description="Seal partner records under a fresh DEK wrapped by the region's KEK. "
                    "Writes one base64 envelope per line.")
    parser.add_argument("--input", required=True, type=Path, help="JSONL or Parquet file")
    parser.add_argument("--output", required=True, type=Path, help="sealed file to write")
    parser.add_argument("--region", required=True, help="home region of the data (e.g. eu)")
    parser.add_argument("--producer", required=True, help="producer (partner) id, e.g. acme")
    parser.add_argument("--state", type=Path, default=Path(".sealbeam"),
                        help="state directory holding keyring.json (default .sealbeam)")
    parser.add_argument("--kind", choices=OUTPUT_KINDS, default="records",
                        help="sealed records (default) or one sealed Arrow batch")
    parser.add_argument("--records-per-key", type=int, default=0,
                        help="records per DEK; 0 = one DEK for the whole file")
    parser.add_argument("--input-format", choices=INPUT_FORMATS, default=None,
                        help="input format (default: from the file suffix)")
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
    report = seal_file(args.input, args.output, keyring=keyring, region=args.region,
                       producer_id=args.producer, output_kind=args.kind,
                       records_per_key=args.records_per_key, input_format=args.input_format,
                       event_time=event_time)
    print(json.dumps(asdict(report)))
    return 0
