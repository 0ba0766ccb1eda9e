"""``sealbeam keys identity``: create (or show) the broker's identity key in a state directory.

``keys init`` already writes ``broker-identity.pem`` (0600) and ``broker-identity.pub.pem``;
this command adds them to a state made before the broker signed its grants, or with
``--rotate`` replaces them (every worker must then pin the new public key, and old
checkpoints stay verifiable only with the old one). It prints the key id and the path of the
public key, never the private key. A thin layer over ``keybroker.identity.BrokerIdentity``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from keybroker.config import BROKER_SETTINGS_FILE, BrokerSettings, ConfigError
from keybroker.identity import IDENTITY_KEY_FILE, BrokerIdentity, IdentityError
from keybroker.identity import public_key_file_name as _public_name

__all__ = ["register_identity", "run_keys_identity"]

USER_ERROR_EXIT = 2


def register_identity(commands: argparse._SubParsersAction) -> None:
    identity = commands.add_parser(
        "identity",
        help="create or show the broker's identity key (signs grants and ledger checkpoints)",
        description="Create the broker's Ed25519 identity key in --state when it has none "
        "(broker.yaml's identity_key, default broker-identity.pem) and print its key id and "
        "public key file, which workers pin (--broker_identity).",
    )
    identity.add_argument("--state", type=Path, default=Path(".sealbeam"),
                          help="state directory (default .sealbeam)")
    identity.add_argument("--rotate", action="store_true",
                          help="replace an existing identity key (workers must pin the new one)")
    identity.set_defaults(func=run_keys_identity)


def _identity_path(state: Path) -> Path:
    settings_path = state / BROKER_SETTINGS_FILE
    if settings_path.is_file():
        return BrokerSettings.load(settings_path).identity_path
    return state / IDENTITY_KEY_FILE


def run_keys_identity(args: argparse.Namespace) -> int:
    try:
        path = _identity_path(args.state)
        if path.exists() and not args.rotate:
            identity = BrokerIdentity.load(path)
            action = "existing"
        else:
            identity = BrokerIdentity.create(path, overwrite=args.rotate)
            action = "rotated" if args.rotate else "created"
    except (ConfigError, IdentityError) as error:
        print(f"sealbeam: error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    print(f"broker identity ({action}): key id {identity.key_id}")
    print(f"public key (pin it in workers): {path.with_name(_public_name(path))}")
    return 0
