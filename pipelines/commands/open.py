"""``sealbeam open``: an authorized reader of a region opens sealed feature batches."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from keybroker.kms.local import LocalKeyring
from pipelines.reading import ROW_FORMATS, open_outputs, summarize, write_rows


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "open", help="open sealed output batches of your region with the local keyring",
        description="Open .sbatch outputs (files, or directories of them) of one region and "
                    "write their rows as JSON lines (stdout by default) or Parquet. Outputs "
                    "of other regions are refused.")
    parser.add_argument("paths", nargs="+", type=Path, help=".sbatch files or directories")
    parser.add_argument("--region", required=True, help="the reader's region")
    parser.add_argument("--state", type=Path, default=Path(".sealbeam"),
                        help="state directory holding keyring.json (default .sealbeam)")
    parser.add_argument("--output", type=Path, default=None,
                        help="file to write rows to (default: JSON lines on stdout)")
    parser.add_argument("--format", choices=ROW_FORMATS, default=None,
                        help="row format (default: from --output's suffix, else jsonl)")
    parser.set_defaults(func=run_open)


def run_open(args: argparse.Namespace) -> int:
    keyring = LocalKeyring.open(args.state / "keyring.json")
    table = open_outputs(args.paths, keyring=keyring, region=args.region)
    row_format = args.format or (
        "parquet" if args.output is not None and args.output.suffix == ".parquet" else "jsonl")
    write_rows(table, args.output, row_format)
    if args.output is not None:
        print(summarize(table))
    else:
        print(summarize(table), file=sys.stderr)
    return 0
