"""``sealbeam open``: an authorized reader of a region opens feature outputs (.sbatch, PME)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from enclave_workers.pme_keys import ROLES
from keybroker.kms.local import LocalKeyring
from pipelines.errors import PipelineError
from pipelines.reading import ROW_FORMATS, open_outputs, summarize, write_rows


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "open", help="open output files of your region with the local keyring",
        description="Open .sbatch (sealed batch) and .parquet (Parquet Modular Encryption) "
                    "outputs (files, or directories of them) of one region and write their "
                    "rows as JSON lines (stdout by default) or Parquet. Outputs of other "
                    "regions are refused.")
    parser.add_argument("paths", nargs="+", type=Path,
                        help=".sbatch / .parquet files or directories")
    parser.add_argument("--region", required=True, help="the reader's region")
    parser.add_argument("--state", type=Path, default=Path(".sealbeam"),
                        help="state directory holding keyring.json (default .sealbeam)")
    parser.add_argument("--output", type=Path, default=None,
                        help="file to write rows to (default, or '-': JSON lines on stdout)")
    parser.add_argument("--format", choices=ROW_FORMATS, default=None,
                        help="row format (default: from --output's suffix, else jsonl)")
    parser.add_argument("--columns", default=None,
                        help="comma-separated columns to read (PME files decrypt only these)")
    parser.add_argument("--roles", default=",".join(ROLES),
                        help="PME master-key roles this reader may unwrap, comma-separated "
                             f"(default {','.join(ROLES)})")
    parser.set_defaults(func=run_open)


def run_open(args: argparse.Namespace) -> int:
    if args.output is not None and str(args.output) == "-":
        args.output = None
    keyring = LocalKeyring.open(args.state / "keyring.json")
    columns = _names(args.columns, "--columns") if args.columns is not None else None
    roles = _names(args.roles, "--roles")
    table = open_outputs(args.paths, keyring=keyring, region=args.region, columns=columns,
                         roles=roles)
    row_format = args.format or (
        "parquet" if args.output is not None and args.output.suffix == ".parquet" else "jsonl")
    write_rows(table, args.output, row_format)
    if args.output is not None:
        print(summarize(table))
    else:
        print(summarize(table), file=sys.stderr)
    return 0


def _names(text: str, flag: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise PipelineError(f"{flag} names nothing")
    return names
