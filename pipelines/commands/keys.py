"""``sealbeam keys``: create the state, rotate KEKs, rewrap sealed files, crypto-shred versions.

- ``keys init``: the embedded default state, a thin layer over ``keybroker.config.init_state``.
  It passes the simulated worker's launch measurement
  (``enclave_workers.evidence.simulated_snp.DEV_MEASUREMENT``) as the demo policy's
  allow-list, because keybroker itself must not import enclave code.
- ``keys identity``: the broker's identity key (``keys_identity.py``).
- ``keys rotate``: ``keybroker.shred.rotate_kek`` (a new primary KEK version, in the ledger).
- ``keys rewrap``: ``keybroker.rewrap.rewrap_paths`` (DEKs under the new version, payload
  bytes unchanged, resumable with a journal); prints the JSON report.
- ``keys shred``: ``keybroker.shred.shred_kek_version`` (destroys a KEK version; needs
  ``--yes``, refuses the primary without ``--force``); with ``--whole-key`` instead of
  ``--version``, ``keybroker.shred.shred_whole_kek`` (destroys every version of a per-partner
  KEK; refuses a KEK that broker.yaml names for a region without ``--force``).

The KMS is the local keyring for ``local://`` KEKs, else the backend that ``--state``'s
broker.yaml configures for the URI's scheme. The keyring and the ledger are the ones
broker.yaml names (``keyring``, ``ledger``), so ``kek-*`` events land in the broker's own
ledger; only a state without broker.yaml falls back to ``--state/keyring.json`` and
``--state/ledger.sqlite``. Handlers print paths, versions and counts, never a key.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT
from envelope import EnvelopeError
from keybroker.attestation.errors import AttestationError
from keybroker.config import BrokerSettings, ConfigError, init_state
from keybroker.identity import IDENTITY_PUBLIC_KEY_FILE
from keybroker.kms.base import KeyManagementService, KmsError
from keybroker.kms.local import LOCAL_SCHEME, LocalKeyring
from keybroker.kms.registry import kms_for_uri, uri_scheme
from keybroker.ledger import AuditLedger, LedgerError
from keybroker.policy import PolicyError
from keybroker.rewrap import rewrap_paths
from keybroker.shred import (
    ShredResult,
    WholeKekShredResult,
    rotate_kek,
    shred_kek_version,
    shred_whole_kek,
)

from .keys_identity import register_identity

__all__ = [
    "regions_served_by",
    "register",
    "run_keys_init",
    "run_keys_rewrap",
    "run_keys_rotate",
    "run_keys_shred",
    "state_ledger_path",
]

USER_ERROR_EXIT = 2
PARTIAL_FAILURE_EXIT = 1
LEDGER_FILE = "ledger.sqlite"
KEYRING_FILE = "keyring.json"
SETTINGS_FILE = "broker.yaml"
DEFAULT_JOURNAL = "rewrap-journal.jsonl"
_KEY_ERRORS = (KmsError, LedgerError, ConfigError, EnvelopeError, OSError)
ShredOutcome = ShredResult | WholeKekShredResult


def _comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def register(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser("keys", help="manage the local keys and broker state")
    commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    init = commands.add_parser(
        "init",
        help="create keyring, named keys, dev SEV-SNP chain, policy and broker settings",
        description="Create the embedded default state in --state: a local keyring with one "
        "KEK per region, a pseudonymization key per tenant, a development SEV-SNP chain, a "
        "demo release policy that trusts only the simulated worker, and broker.yaml.",
    )
    init.add_argument("--state", type=Path, default=Path(".sealbeam"),
                      help="state directory (default .sealbeam)")
    init.add_argument("--regions", type=_comma_list, default=["eu", "us"],
                      help="comma-separated residency regions (default eu,us)")
    init.add_argument("--tenants", type=_comma_list, default=["acme"],
                      help="comma-separated tenants that get a pseudonym/<tenant> key "
                      "(default acme)")
    init.add_argument("--measurement", action="append", dest="measurements", metavar="HEX",
                      help="launch measurement the demo policy allows (repeatable; default: "
                      "the simulated worker's)")
    init.add_argument("--force", action="store_true",
                      help="replace an existing state (its old keys become unusable)")
    init.set_defaults(func=run_keys_init)
    _register_rotate(commands)
    _register_rewrap(commands)
    _register_shred(commands)
    register_identity(commands)


def _state_and_kek(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", type=Path, default=Path(".sealbeam"),
                        help="state directory whose broker.yaml names the keyring and "
                        "the ledger (default .sealbeam)")
    parser.add_argument("--kek", required=True, metavar="URI",
                        help="the KEK, e.g. local://keyring/eu/kek-1")


def _register_rotate(commands: argparse._SubParsersAction) -> None:
    rotate = commands.add_parser(
        "rotate", help="make a new KEK version primary (recorded in the ledger)",
        description="Create a new version of the KEK and make it primary: new data keys are "
        "wrapped under it, older versions still unwrap until they are destroyed. Then run "
        "'keys rewrap' to move existing files to the new version.",
    )
    _state_and_kek(rotate)
    rotate.set_defaults(func=run_keys_rotate)


def _register_rewrap(commands: argparse._SubParsersAction) -> None:
    rewrap = commands.add_parser(
        "rewrap", help="rewrap sealed files' data keys under the KEK's primary version",
        description="For every sealed file under PATH (record files: one base64 envelope per "
        "line; *.sbatch batches), unwrap each data key under an older version of --kek once, "
        "wrap it under the primary version and replace only the envelopes' key blocks: "
        "payload bytes stay identical. Files are replaced atomically; a journal makes an "
        "interrupted run resumable. Prints a JSON report; exits 1 if a file failed.",
    )
    _state_and_kek(rewrap)
    rewrap.add_argument("--to-version", metavar="V", default=None,
                        help="the version to rewrap to; must be the primary (default: the "
                        "primary)")
    rewrap.add_argument("--journal", type=Path, default=None,
                        help=f"journal of completed files (default STATE/{DEFAULT_JOURNAL})")
    rewrap.add_argument("--report", type=Path, default=None,
                        help="also write the JSON report to this file")
    rewrap.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="sealed files or directories (searched recursively)")
    rewrap.set_defaults(func=run_keys_rewrap)


def _register_shred(commands: argparse._SubParsersAction) -> None:
    shred = commands.add_parser(
        "shred", help="crypto-shred: destroy a KEK version for good",
        description="Destroy one version of the KEK in its backend. Every data key wrapped "
        "under it, and so every envelope sealed with those keys, becomes unreadable "
        "('key destroyed'). Rewrap what must survive first. The primary version is refused "
        "unless --force, which rotates first. Azure Key Vault cannot destroy one version: "
        "there the version is only disabled and the output says material_erased: false. "
        "--whole-key (instead of --version) destroys every version of a per-partner KEK "
        "(azure-kv: delete and purge the key); a KEK that broker.yaml names for a region is "
        "refused unless --force. Requires --yes; nothing is prompted.",
    )
    _state_and_kek(shred)
    target = shred.add_mutually_exclusive_group(required=True)
    target.add_argument("--version", metavar="V", help="the version to destroy")
    target.add_argument("--whole-key", action="store_true",
                        help="destroy every version of the KEK (the erasure of a per-partner "
                        "KEK; azure-kv deletes and purges the key)")
    shred.add_argument("--yes", action="store_true",
                       help="confirm the destruction (required; it cannot be undone)")
    shred.add_argument("--force", action="store_true",
                       help="if V is the primary version, rotate first and then destroy it; "
                       "with --whole-key, destroy a KEK that a region still uses")
    shred.set_defaults(func=run_keys_shred)


def _broker_settings(state: Path) -> BrokerSettings | None:
    """The state's broker.yaml, or None when the state has none (a bare keyring)."""
    path = state / SETTINGS_FILE
    if not path.exists():
        return None
    return BrokerSettings.load(path)


def state_ledger_path(state: Path) -> Path:
    """The ledger the broker of ``state`` writes (broker.yaml's ``ledger``), so the
    ``kek-*`` events sit in the same hash chain as its grants; without broker.yaml,
    ``STATE/ledger.sqlite``."""
    settings = _broker_settings(state)
    return settings.ledger_path if settings is not None else state / LEDGER_FILE


def _kms_for(state: Path, kek_uri: str) -> KeyManagementService:
    """The local keyring broker.yaml names for local:// KEKs (``STATE/keyring.json`` without
    broker.yaml), else the backend broker.yaml configures."""
    settings = _broker_settings(state)
    if uri_scheme(kek_uri) == LOCAL_SCHEME:
        keyring = settings.keyring_path if settings is not None else state / KEYRING_FILE
        return LocalKeyring.open(keyring)
    if settings is None:
        raise ConfigError(f"no broker settings at {state / SETTINGS_FILE}: the KMS backend "
                          f"of {kek_uri} is configured there")
    return kms_for_uri(kek_uri, settings)


def _user_error(error: BaseException) -> int:
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    print(f"sealbeam: error: {message}", file=sys.stderr)
    return USER_ERROR_EXIT


def run_keys_rotate(args: argparse.Namespace) -> int:
    try:
        kms = _kms_for(args.state, args.kek)
        with AuditLedger(state_ledger_path(args.state)) as ledger:
            result = rotate_kek(kms, args.kek, ledger=ledger)
    except _KEY_ERRORS as error:
        return _user_error(error)
    print(json.dumps(result.to_json()))
    return 0


def run_keys_rewrap(args: argparse.Namespace) -> int:
    journal = args.journal or args.state / DEFAULT_JOURNAL
    try:
        kms = _kms_for(args.state, args.kek)
        report = rewrap_paths(args.paths, kms=kms, kek_uri=args.kek, journal_path=journal,
                              target_version=args.to_version)
        with AuditLedger(state_ledger_path(args.state)) as ledger:
            ledger.append("kek-rewrap", "info", {
                "kek": report.kek_uri, "target_version": report.target_version,
                "files_changed": len(report.files_changed),
                "files_failed": len(report.files_failed),
                "envelopes_rewrapped": report.envelopes_rewrapped,
                "data_keys": report.data_keys,
            })
        document = json.dumps(report.to_json(), indent=2)
        if args.report is not None:
            args.report.write_text(document + "\n", encoding="utf-8")
    except _KEY_ERRORS as error:
        return _user_error(error)
    print(document)
    return 0 if report.ok else PARTIAL_FAILURE_EXIT


def run_keys_shred(args: argparse.Namespace) -> int:
    whole_key = bool(getattr(args, "whole_key", False))
    if not args.yes:
        what = "every version" if whole_key else f"version {args.version}"
        print(f"sealbeam: error: destroying {what} of {args.kek} cannot be "
              "undone; pass --yes to confirm", file=sys.stderr)
        return USER_ERROR_EXIT
    try:
        kms = _kms_for(args.state, args.kek)
        with AuditLedger(state_ledger_path(args.state)) as ledger:
            if whole_key:
                result: ShredOutcome = shred_whole_kek(
                    kms, args.kek, ledger=ledger, force=args.force,
                    serving_regions=regions_served_by(args.state, args.kek))
            else:
                result = shred_kek_version(kms, args.kek, args.version, ledger=ledger,
                                           force=args.force)
    except _KEY_ERRORS as error:
        return _user_error(error)
    print(json.dumps(result.to_json()))
    return 0


def regions_served_by(state: Path, kek_uri: str) -> list[str]:
    """The regions whose new outputs broker.yaml wraps under ``kek_uri`` (any version of it).

    No broker.yaml means no region is known to use it."""
    settings = _broker_settings(state)
    if settings is None:
        return []
    region_keks = settings.region_keks
    return sorted(region for region, uri in region_keks.items()
                  if uri == kek_uri or uri.startswith(kek_uri.rstrip("/") + "/"))


def run_keys_init(args: argparse.Namespace) -> int:
    measurements = args.measurements or [DEV_MEASUREMENT]
    try:
        settings = init_state(
            args.state,
            regions=args.regions,
            tenants=args.tenants,
            force=args.force,
            allowed_measurements=measurements,
        )
    except (ConfigError, KmsError, PolicyError, AttestationError, FileExistsError) as error:
        print(f"sealbeam: error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    print(f"state: {settings.state_dir}")
    for region, kek_uri in sorted(settings.region_keks.items()):
        print(f"region {region}: KEK {kek_uri}")
    for tenant in args.tenants:
        print(f"named key: pseudonym/{tenant}")
    print(f"policy: {settings.policy_path} (allows the SIMULATED SEV-SNP worker only)")
    print(f"broker identity: {settings.identity_path.with_name(IDENTITY_PUBLIC_KEY_FILE)} "
          "(workers pin it)")
    print(f"settings: {settings.state_dir / SETTINGS_FILE}")
    return 0
