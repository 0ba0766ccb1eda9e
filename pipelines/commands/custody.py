"""``sealbeam custody verify|show``: check an output's (or a run's) chain of custody offline.

A thin layer over ``pipelines.custody.verify_output`` and ``pipelines.custody_run.verify_run``
(a batch or streaming run: outputs, dead letters, late records, duplicates).
``verify`` prints ONE JSON verdict and exits 0 only when every check holds (1 when one
fails, with the reasons in the verdict; 2 when a file cannot be read at all). ``show`` prints
the same verdict as a table for a person, with the same exit codes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from keybroker.checkpoints import CheckpointError, load_anchors
from keybroker.identity import IDENTITY_PUBLIC_KEY_FILE, BrokerPublicKey, IdentityError
from keybroker.ledger import LedgerError
from keybroker.ledger_backends import open_ledger_for_audit
from pipelines.custody import CHECKS, CustodyError, CustodyPolicy, verify_output
from pipelines.custody_run import verify_run

__all__ = ["register", "run_custody"]

FAILED_EXIT = 1
USER_ERROR_EXIT = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    custody = subparsers.add_parser(
        "custody", help="verify an output's chain of custody offline",
        description="Check an output file against its signed custody statement (in-toto "
                    "Statement v1 in DSSE, <output>.intoto.json), with only the broker's "
                    "public key: digest, signature chain (TEE statement key -> the broker's "
                    "signed attestation result -> broker key), policy, ledger head; or a "
                    "whole run (--run DIR): every output verifies and every input record is "
                    "in an output, a dead letter, a late file (streaming: records whose "
                    "window had closed, late/*.jsonl) or is a duplicate. A streaming run fed "
                    "by Pub/Sub or a test stream names no input files: pass the partner's "
                    "published files with --input.")
    commands = custody.add_subparsers(dest="custody_command", metavar="COMMAND", required=True)
    for name, help_text in (("verify", "print one JSON verdict; exit 0 only when all holds"),
                            ("show", "print the verdict as a table for a person")):
        parser = commands.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("output", nargs="?", type=Path, metavar="OUTPUT",
                            help="the output file to check (or use --run)")
        parser.add_argument("--run", type=Path, metavar="DIR", default=None,
                            help="a run's output root (batch or streaming): check "
                            "custody-run.intoto.json, every output, dead-letter and late "
                            "file, and that no input was lost: input records = outputs' + "
                            "dead letters' + late records + duplicates")
        parser.add_argument("--input", type=Path, action="append", default=None,
                            metavar="FILE", help="with --run: an input file of the run "
                            "(repeatable; default: the files the run statement names; "
                            "required for a Pub/Sub or test-stream run, which names none: "
                            "the partner's published files)")
        parser.add_argument("--statement", type=Path, default=None, metavar="FILE",
                            help="the statement (default: OUTPUT.intoto.json beside it)")
        parser.add_argument("--broker-key", type=Path, required=True, metavar="PEM",
                            help=f"the broker's public identity key ({IDENTITY_PUBLIC_KEY_FILE})")
        parser.add_argument("--policy", type=Path, default=None, metavar="FILE",
                            help="custody policy YAML/JSON: tees, measurements, "
                            "spec_fingerprints, allow_simulated")
        parser.add_argument("--anchor", type=Path, action="append", default=[], metavar="FILE",
                            help="signed ledger checkpoints (a saved checkpoint, "
                            "ledger-checkpoints.jsonl, a run summary); repeatable")
        parser.add_argument("--ledger", type=Path, default=None, metavar="SQLITE",
                            help="the broker's ledger, to confirm it still holds the "
                            "statement's head")
        parser.set_defaults(func=run_custody, custody_view=name)


def run_custody(args: argparse.Namespace) -> int:
    if (args.output is None) == (args.run is None):
        print("sealbeam: error: custody: give OUTPUT or --run DIR (one of them)",
              file=sys.stderr)
        return USER_ERROR_EXIT
    try:
        broker_key = BrokerPublicKey.load(args.broker_key)
        policy = CustodyPolicy.load(args.policy) if args.policy is not None else None
        anchors = [envelope for anchor in args.anchor for envelope in load_anchors(anchor)]
        if args.ledger is not None:
            with open_ledger_for_audit(args.ledger, None) as ledger:
                verdict = _verify(args, broker_key, policy, anchors, ledger)
        else:
            verdict = _verify(args, broker_key, policy, anchors, None)
    except (CustodyError, CheckpointError, IdentityError, LedgerError) as error:
        print(f"sealbeam: error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    document = verdict.to_json()
    if args.custody_view == "show":
        print(render_table(document))
    else:
        print(json.dumps(document, sort_keys=True))
    return 0 if verdict.ok else FAILED_EXIT


def _verify(args: argparse.Namespace, broker_key: BrokerPublicKey,
            policy: CustodyPolicy | None, anchors: list[object], ledger: Any) -> Any:
    if args.run is not None:
        return verify_run(args.run, broker_key=broker_key, policy=policy, anchors=anchors,
                          inputs=args.input, ledger=ledger)
    return verify_output(args.output, broker_key=broker_key, statement=args.statement,
                         policy=policy, anchors=anchors, ledger=ledger)


def _mark(value: object) -> str:
    return {True: "ok", False: "FAILED", None: "not checked"}.get(value, str(value))  # type: ignore[call-overload]


def render_table(document: dict[str, Any]) -> str:
    """A verdict (output or run) as aligned ``name  value`` lines."""
    rows: list[tuple[str, str]] = []
    if "checks" in document:
        rows.append(("output", document["output"]))
        rows.append(("statement", document["statement"]))
        rows += [(f"check {name}", _mark(document["checks"].get(name))) for name in CHECKS]
        for name, value in sorted(document["facts"].items()):
            rows.append((name, json.dumps(value, sort_keys=True)
                         if isinstance(value, dict | list) else str(value)))
    else:
        rows.append(("run", document["run"]))
        rows += [(name, str(value)) for name, value in sorted(document["facts"].items())]
        rows += [(f"output {Path(o['output']).name}", "ok" if o["ok"] else "FAILED")
                 for o in document["outputs"]]
    rows.append(("verdict", "ok" if document["ok"] else "REFUSED"))
    rows += [("reason", reason) for reason in document["reasons"]]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)
