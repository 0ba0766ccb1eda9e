"""``sealbeam features check`` and ``sealbeam features run``: try a feature spec on samples.

What it does: ``check SPEC`` validates a spec (every problem, with line and field) and prints
its fingerprint and output schema; ``run SPEC --in FILE --out FILE [--key NAME=HEX ...]``
featurizes a plaintext Parquet/JSONL sample into Parquet and prints one JSON line of counts
(rows in and out, violations, suppressed rows, fingerprint); ``--violations PATH`` writes the
violations as JSONL (row index, column, reason -- never a value).

What it does not: no keys from the broker and no sealed data: this is for specs and samples
on a workstation. Keys given on the command line are visible to other local users (process
list); use throwaway sample keys.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence

from enclave_workers.features import (
    FeatureError,
    FeatureSpec,
    compile_spec,
)
from enclave_workers.features.runner import MAX_KEY_BYTES
from enclave_workers.features.sample_files import read_sample_table, write_parquet
from enclave_workers.features.types import type_name
from pipelines.stdio import STDIO, input_path, output_path

_KEY_NAME = re.compile(r"[A-Za-z0-9_.:/\-]{1,128}")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``features`` command group to ``sealbeam``."""
    group = subparsers.add_parser("features", help="check and try feature specs",
                                  description=__doc__.split("\n\n")[1])
    commands = group.add_subparsers(dest="features_command", metavar="COMMAND", required=True)

    check = commands.add_parser("check", help="validate a spec; print its output schema")
    check.add_argument("spec", metavar="SPEC", help="feature spec (YAML); '-' for stdin")
    check.set_defaults(func=check_command)

    run = commands.add_parser("run", help="featurize a plaintext sample file to Parquet")
    run.add_argument("spec", metavar="SPEC", help="feature spec (YAML); '-' for stdin")
    run.add_argument("--in", dest="input", required=True, metavar="FILE",
                     help="input: .parquet/.pq or .jsonl/.ndjson/.json (JSON Lines); '-' reads "
                          "JSON Lines from stdin")
    run.add_argument("--out", dest="output", required=True, metavar="FILE",
                     help="output Parquet file; '-' for stdout (the summary then goes to "
                          "stderr)")
    run.add_argument("--key", dest="keys", action="append", default=[], metavar="NAME=HEX",
                     help="a key the spec names, as hex (repeatable; sample keys only)")
    run.add_argument("--violations", metavar="PATH",
                     help="also write the violations as JSON Lines")
    run.set_defaults(func=run_command)


def check_command(args: argparse.Namespace) -> int:
    try:
        with input_path(args.spec, ".yaml") as spec_path:
            compiled = compile_spec(FeatureSpec.load(spec_path))
    except FeatureError as exc:
        return _fail(str(exc))
    print(f"{args.spec}: ok, {len(compiled.spec.features)} features, "
          f"fingerprint {compiled.fingerprint}")
    if compiled.key_names:
        print(f"keys needed: {', '.join(compiled.key_names)}")
    if compiled.spec.k_anonymity is not None:
        print(f"k-anonymity: k={compiled.spec.k_anonymity.k} over "
              f"{', '.join(compiled.quasi_identifier_columns)}")
    print("output schema:")
    for field in compiled.output_schema:
        print(f"  {field.name}: {type_name(field.type)}")
    return 0


def run_command(args: argparse.Namespace) -> int:
    try:
        keys = parse_keys(args.keys)
        if args.spec == STDIO and args.input == STDIO:
            raise FeatureError("only one of SPEC and --in can be standard input")
        with input_path(args.spec, ".yaml") as spec_path:
            compiled = compile_spec(FeatureSpec.load(spec_path))
        with input_path(args.input, ".jsonl") as sample_path:
            table = read_sample_table(sample_path, compiled.spec)
        result = compiled.apply(table, keys)
        with output_path(args.output, ".parquet") as target:
            write_parquet(result.table, target)
        if args.violations:
            _write_violations(result.violations, args.violations)
    except FeatureError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.filename or 'file'}: {exc.strerror or 'I/O error'}")
    print(json.dumps({
        "rows_in": table.num_rows,
        "rows_out": result.table.num_rows,
        "violations": len(result.violations),
        "violating_rows": result.violating_rows,
        "suppressed_rows": result.suppressed_rows,
        "fingerprint": compiled.fingerprint,
    }, sort_keys=True), file=sys.stderr if args.output == STDIO else sys.stdout)
    return 0


def parse_keys(items: Sequence[str]) -> dict[str, bytes]:
    """``NAME=HEX`` items -> {name: key bytes}; messages name the key, never its value."""
    keys: dict[str, bytes] = {}
    for item in items:
        name, sep, hex_text = item.partition("=")
        if not sep or not _KEY_NAME.fullmatch(name):
            raise FeatureError("--key must look like NAME=HEX with a NAME of letters, digits "
                               "and _.:/-")
        if name in keys:
            raise FeatureError(f"--key {name} given twice")
        if len(hex_text) > 2 * MAX_KEY_BYTES:
            raise FeatureError(f"--key {name}: longer than {MAX_KEY_BYTES} bytes")
        try:
            keys[name] = bytes.fromhex(hex_text)
        except ValueError:
            raise FeatureError(f"--key {name}: the value is not hex") from None
    return keys


def _write_violations(violations, path: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for v in violations:
            handle.write(json.dumps({"row_index": v.row_index, "column": v.column,
                                     "reason": v.reason}) + "\n")


def _fail(message: str) -> int:
    print(f"sealbeam: error: {message}", file=sys.stderr)
    return 2
