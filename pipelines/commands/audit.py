"""``sealbeam audit verify``: check the audit ledger's hash chain.

A thin layer over ``keybroker.ledger.AuditLedger.verify``. Exit 0 and print the head hash
(anchor it somewhere else to detect a cut-off tail later) when the chain holds; exit 1 and
name the first bad entry when it does not; exit 2 when the ledger cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from keybroker.ledger import AuditLedger, LedgerError

__all__ = ["CHAIN_BROKEN_EXIT", "register", "run_audit_verify"]

CHAIN_BROKEN_EXIT = 1
USER_ERROR_EXIT = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    audit = subparsers.add_parser("audit", help="inspect the broker's audit ledger")
    commands = audit.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)
    verify = commands.add_parser(
        "verify",
        help="verify the ledger's hash chain",
        description="Recompute the hash chain of the audit ledger and name the first entry "
        "that was altered, removed or reordered. A chain cannot show that entries were cut "
        "off its end: pass a head hash recorded earlier with --expect-head.",
    )
    verify.add_argument("--ledger", type=Path, required=True, help="ledger.sqlite to verify")
    verify.add_argument("--expect-head", metavar="HEX", default=None,
                        help="a head hash anchored earlier; it must still be in the chain")
    verify.set_defaults(func=run_audit_verify)


def run_audit_verify(args: argparse.Namespace) -> int:
    try:
        with AuditLedger(args.ledger, read_only=True) as ledger:
            result = ledger.verify(expect_head=args.expect_head)
    except LedgerError as error:
        print(f"sealbeam: error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    if not result.ok:
        print(f"sealbeam: error: {result.summary()}", file=sys.stderr)
        return CHAIN_BROKEN_EXIT
    print(result.summary())
    return 0
