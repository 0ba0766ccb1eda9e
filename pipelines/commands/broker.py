"""``sealbeam broker serve``: run the key broker in the foreground, over HTTPS or on loopback.

A thin layer over ``keybroker.service.server.serve_forever`` with the settings in
``<state>/broker.yaml``. ``--tls-cert``/``--tls-key`` serve HTTPS (``--tls-client-ca``
also requires client certificates). Plain HTTP is served on loopback only, unless
``--allow-insecure-http`` says otherwise: keys leave the broker HPKE-sealed and signed, but
session ids are bearer tokens.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from keybroker.attestation.errors import AttestationError
from keybroker.config import BROKER_SETTINGS_FILE, BrokerSettings, ConfigError
from keybroker.kms.base import KmsError
from keybroker.ledger import LedgerError
from keybroker.policy import PolicyError
from keybroker.service.tls import ServerTls, TlsConfigError

__all__ = ["register", "run_broker_serve"]

USER_ERROR_EXIT = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    broker = subparsers.add_parser("broker", help="run the key broker")
    commands = broker.add_subparsers(dest="broker_command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve the key broker over HTTP until interrupted",
        description="Serve the attestation-gated key broker (docs/PROTOCOL.md) with the "
        "settings in <state>/broker.yaml.",
    )
    serve.add_argument("--state", type=Path, default=Path(".sealbeam"),
                       help="state directory made by `sealbeam keys init` (default .sealbeam)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                       "127.0.0.1)")
    serve.add_argument("--port", type=int, default=8787, help="port (default 8787)")
    serve.add_argument("--tls-cert", type=Path, default=None, metavar="PEM",
                       help="server certificate (chain) to serve HTTPS with")
    serve.add_argument("--tls-key", type=Path, default=None, metavar="PEM",
                       help="the server certificate's private key")
    serve.add_argument("--tls-client-ca", type=Path, default=None, metavar="PEM",
                       help="require client certificates issued by this CA (mutual TLS)")
    serve.add_argument("--allow-insecure-http", action="store_true",
                       help="serve plain HTTP on a non-loopback address (not recommended)")
    serve.set_defaults(func=run_broker_serve)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_tls(args: argparse.Namespace) -> ServerTls | None:
    """The TLS settings of the command line; None for plain HTTP (which must be allowed)."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise TlsConfigError("--tls-cert and --tls-key go together")
    if args.tls_cert is None:
        if args.tls_client_ca is not None:
            raise TlsConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        if not _is_loopback(args.host) and not args.allow_insecure_http:
            raise TlsConfigError(
                f"refusing to serve plain HTTP on {args.host}: pass --tls-cert/--tls-key, "
                "or --allow-insecure-http if TLS ends in front of the broker"
            )
        return None
    tls = ServerTls(args.tls_cert, args.tls_key, args.tls_client_ca)
    tls.check()
    return tls


def run_broker_serve(args: argparse.Namespace) -> int:
    from keybroker.service.server import serve_forever

    try:
        tls = server_tls(args)
        settings = BrokerSettings.load(args.state / BROKER_SETTINGS_FILE)
        if tls is None and not _is_loopback(args.host):
            print(f"sealbeam: warning: serving plain HTTP on {args.host}", file=sys.stderr)
        serve_forever(settings, host=args.host, port=args.port, tls=tls)
    except (ConfigError, PolicyError, KmsError, LedgerError, AttestationError,
            TlsConfigError) as error:
        print(f"sealbeam: error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    return 0
