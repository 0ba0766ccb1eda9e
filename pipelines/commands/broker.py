"""``sealbeam broker serve``: run the key broker over HTTP in the foreground.

A thin layer over ``keybroker.service.server.serve_forever`` with the settings in
``<state>/broker.yaml``. Logs (uvicorn's and one structured access record per request) go to
stderr as text or, with ``--log-format json``, JSON lines; ``/metrics`` serves Prometheus
metrics and ``/docs`` the API page from packaged files. It serves plain HTTP: keys leave it
HPKE-sealed to attested TEEs, but session ids are bearer tokens, so anything but loopback
belongs behind TLS.
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
    serve.set_defaults(func=run_broker_serve)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _show_access_log() -> None:
    """One access record per request at INFO, unless --log-level asks for errors only."""
    import logging

    from keybroker.service.observability import ACCESS_LOGGER

    if logging.getLogger().getEffectiveLevel() <= logging.WARNING:
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO)


def run_broker_serve(args: argparse.Namespace) -> int:
    from keybroker.service.server import serve_forever

    _show_access_log()
    try:
        settings = BrokerSettings.load(args.state / BROKER_SETTINGS_FILE)
        if not _is_loopback(args.host):
            print(f"sealbeam: warning: serving plain HTTP on {args.host}; put TLS in front",
                  file=sys.stderr)
        serve_forever(settings, host=args.host, port=args.port)
    except (ConfigError, PolicyError, KmsError, LedgerError, AttestationError) as error:
        print(f"sealbeam: error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    return 0
