"""``sealbeam audit verify`` / ``audit checkpoint``: check the ledger; save a signed head.

A thin layer over ``keybroker.ledger.AuditLedger.verify`` and ``keybroker.checkpoints``.
Exit 0 and print the head hash when the chain holds (and every ``--anchor`` checkpoint,
signed by the broker's identity key, is still in it); exit 1 and name the first bad entry,
or the anchor the ledger no longer matches (truncated, rewritten, replaced); exit 2 when
the ledger, an anchor or the broker key cannot be read or an anchor's signature is bad.
``audit checkpoint`` fetches the broker's signed head (``BrokerClient.ledger_head``),
verifies it with the pinned key and prints it, to be kept as an anchor.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from keybroker.checkpoints import CheckpointError, check_anchor, load_anchors, verify_checkpoint
from keybroker.identity import IDENTITY_PUBLIC_KEY_FILE, BrokerPublicKey, IdentityError
from keybroker.ledger import LedgerError
from keybroker.ledger_backends import open_ledger_for_audit

__all__ = ["CHAIN_BROKEN_EXIT", "register", "run_audit_checkpoint", "run_audit_verify"]

CHAIN_BROKEN_EXIT = 1
USER_ERROR_EXIT = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    audit = subparsers.add_parser("audit", help="inspect the broker's audit ledger")
    commands = audit.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)
    verify = commands.add_parser(
        "verify",
        help="verify the ledger's hash chain",
        description="Recompute the hash chain of the audit ledger and name the first entry "
        "that was altered, removed or reordered. A chain alone cannot show that entries were "
        "cut off its end or that it was recomputed: pass the broker's signed checkpoints "
        "with --anchor (or a head hash recorded earlier with --expect-head).",
    )
    source = verify.add_mutually_exclusive_group(required=True)
    source.add_argument("--ledger", type=Path, help="ledger.sqlite to verify")
    source.add_argument("--ledger-url", metavar="URL",
                        help="a PostgreSQL ledger (postgresql://...) to verify")
    verify.add_argument("--expect-head", metavar="HEX", default=None,
                        help="a head hash anchored earlier; it must still be in the chain")
    verify.add_argument("--anchor", type=Path, action="append", default=[], metavar="FILE",
                        help="a signed ledger checkpoint: a saved checkpoint, the broker's "
                        "ledger-checkpoints.jsonl, or a run summary / manifest JSON with "
                        "ledger_head (repeatable); catches truncation and rewrites")
    verify.add_argument("--broker-key", type=Path, default=None, metavar="PEM",
                        help="the broker's public identity key that signed the anchors "
                        f"(default: {IDENTITY_PUBLIC_KEY_FILE} beside --ledger)")
    verify.set_defaults(func=run_audit_verify)
    checkpoint = commands.add_parser(
        "checkpoint",
        help="fetch and save the broker's signed ledger head",
        description="Ask a running broker for its ledger head (GET /v1/ledger/head), verify "
        "the checkpoint with the broker's pinned public key, and print it as JSON: keep it "
        "where the broker cannot write and pass it to `audit verify --anchor` later.",
    )
    checkpoint.add_argument("--broker-url", required=True, help="the broker's base URL")
    checkpoint.add_argument("--broker-key", type=Path, required=True, metavar="PEM",
                            help="the broker's public identity key (broker-identity.pub.pem)")
    checkpoint.add_argument("--ca-bundle", type=Path, default=None, metavar="PEM",
                            help="CA certificates for an https:// broker (default: the system's)")
    checkpoint.set_defaults(func=run_audit_checkpoint)


def run_audit_verify(args: argparse.Namespace) -> int:
    try:
        checkpoints = _verified_anchors(args)
        with open_ledger_for_audit(args.ledger, args.ledger_url) as ledger:
            result = ledger.verify(expect_head=args.expect_head)
            checks = [check_anchor(ledger, checkpoint) for checkpoint in checkpoints]
    except (LedgerError, CheckpointError, IdentityError) as error:
        print(f"sealbeam: error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    if not result.ok:
        print(f"sealbeam: error: {result.summary()}", file=sys.stderr)
        return CHAIN_BROKEN_EXIT
    broken = [check for check in checks if not check.ok]
    for check in broken:
        print(f"sealbeam: error: ledger does not match the checkpoint of "
              f"{check.checkpoint.entries} entries: {check.problem}", file=sys.stderr)
    if broken:
        return CHAIN_BROKEN_EXIT
    print(result.summary())
    if checks:
        newest = max(check.checkpoint.entries for check in checks)
        print(f"anchors ok: {len(checks)} signed checkpoint(s), the newest at entry {newest}")
    return 0


def run_audit_checkpoint(args: argparse.Namespace) -> int:
    from keybroker.client import BrokerClient, BrokerError

    try:
        key = BrokerPublicKey.load(args.broker_key)
        with BrokerClient(args.broker_url, broker_identity=key, ca_bundle=args.ca_bundle) as client:
            checkpoint = client.ledger_head()
    except (IdentityError, BrokerError) as error:
        print(f"sealbeam: error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    print(json.dumps(dict(checkpoint.envelope), sort_keys=True))
    return 0


def _verified_anchors(args: argparse.Namespace) -> list:
    if not args.anchor:
        return []
    key_path = args.broker_key
    if key_path is None:
        if args.ledger is None:
            raise IdentityError("--anchor with --ledger-url needs --broker-key")
        key_path = Path(args.ledger).parent / IDENTITY_PUBLIC_KEY_FILE
    public_key = BrokerPublicKey.load(key_path)
    return [
        verify_checkpoint(public_key, envelope)
        for anchor in args.anchor
        for envelope in load_anchors(anchor)
    ]
