"""``sealbeam keys init``: create the embedded default state (keyring, dev TEE chain, policy).

A thin layer over ``keybroker.config.init_state``. It passes the simulated worker's launch
measurement (``enclave_workers.evidence.simulated_snp.DEV_MEASUREMENT``) as the demo
policy's allow-list, because keybroker itself must not import enclave code. It prints
where things were written, never a key.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT
from keybroker.attestation.errors import AttestationError
from keybroker.config import ConfigError, init_state
from keybroker.kms.base import KmsError
from keybroker.policy import PolicyError

__all__ = ["register", "run_keys_init"]

USER_ERROR_EXIT = 2


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
    print(f"settings: {settings.state_dir / 'broker.yaml'}")
    return 0
