"""``sealbeam unseal``: a key holder opens any sealed record or batch file through the KMS.

A thin layer over ``pipelines.unsealing.unseal_files``: the KMS is the one ``--state``
configures (local keyring, or the backend in broker.yaml), never the broker; the decision goes
to the state's audit ledger. Prints a JSON report on stderr when rows go to stdout, on stdout
otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

from pipelines.state_keys import kms_for_kek, state_ledger_path
from pipelines.unsealing import STDIO, UNSEAL_FORMATS, unseal_files

_SUFFIX_FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".arrows": "arrow",
                   ".jsonl": "jsonl", ".ndjson": "jsonl"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "unseal", help="open any sealed file with a key you hold through the KMS",
        description="Open sealed record files (one base64 envelope per line) and sealed "
                    "batches (.sbatch, or a base64 line) with data keys unwrapped by the KMS "
                    "that --state configures (local keyring, or the backend in broker.yaml) "
                    "- not through the broker. Every key is unwrapped before a row is "
                    "written; a key the KMS refuses stops the run with one line "
                    "(exit 2). The decision is recorded in the state's audit ledger "
                    "(event 'unseal'). Rows go out as JSON lines (default), an Arrow IPC "
                    "stream or Parquet.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="sealed files; '-' reads standard input")
    parser.add_argument("--output", "-o", default=STDIO,
                        help="file to write rows to; '-' for standard output (default)")
    parser.add_argument("--state", type=Path, default=Path(".sealbeam"),
                        help="state directory whose broker.yaml (or keyring.json) names the "
                             "KMS and the ledger (default .sealbeam)")
    parser.add_argument("--format", choices=UNSEAL_FORMATS, default=None,
                        help="row format (default: from --output's suffix, else jsonl)")
    parser.set_defaults(func=run_unseal)


def run_unseal(args: argparse.Namespace) -> int:
    row_format = args.format or _SUFFIX_FORMATS.get(Path(args.output).suffix, "jsonl")
    report = unseal_files(args.inputs, args.output, row_format=row_format,
                          kms_for=partial(kms_for_kek, args.state),
                          ledger_path=state_ledger_path(args.state))
    stream = sys.stderr if args.output == STDIO else sys.stdout
    print(json.dumps(report.to_json(), sort_keys=True), file=stream)
    return 0
