"""``sealbeam broker serve``: run the key broker in the foreground, over HTTPS or on loopback.

A thin layer over ``keybroker.service.server.serve_forever`` with the settings in
``<state>/broker.yaml``. ``--tls-cert``/``--tls-key`` serve HTTPS (``--tls-client-ca``
also requires client certificates). Plain HTTP is served on loopback only, unless
``--allow-insecure-http`` says otherwise: keys leave the broker HPKE-sealed and signed, but
session ids are bearer tokens. Logs (uvicorn's and one structured access record per request) go to
stderr as text or, with ``--log-format json``, JSON lines; ``/metrics`` serves Prometheus
metrics and ``/docs`` the API page from packaged files. ``--workers N`` serves from N
processes on one socket (all state they must share is in the state directory; rate limits,
metrics and the DEK cache are per process: docs/OPERATIONS.md).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from keybroker.attestation.errors import AttestationError
from keybroker.client_tls import is_loopback_host
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
    serve.add_argument("--workers", type=_worker_count, default=1, metavar="N",
                       help="serve from N processes on one port (default 1; raise it to the "
                       "number of cores the broker may use when one process is CPU-bound: "
                       "docs/OPERATIONS.md)")
    serve.set_defaults(func=run_broker_serve)


def _worker_count(text: str) -> int:
    from keybroker.service.workers import MAX_WORKERS

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_WORKERS}, got {value}")
    return value


def server_tls(args: argparse.Namespace) -> ServerTls | None:
    """The TLS settings of the command line; None for plain HTTP (which must be allowed)."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise TlsConfigError("--tls-cert and --tls-key go together")
    if args.tls_cert is None:
        if args.tls_client_ca is not None:
            raise TlsConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        if not is_loopback_host(args.host) and not args.allow_insecure_http:
            raise TlsConfigError(
                f"refusing to serve plain HTTP on {args.host}: pass --tls-cert/--tls-key, "
                "or --allow-insecure-http if TLS ends in front of the broker"
            )
        return None
    tls = ServerTls(args.tls_cert, args.tls_key, args.tls_client_ca)
    tls.check()
    return tls


def _worker_logging(level: str | None, log_format: str | None) -> None:
    """Logging in a worker process as the command line set it up in the parent."""
    from keybroker.logs import configure_logging

    configure_logging(level or "warning", log_format or "text")
    _show_access_log()


def _show_access_log() -> None:
    """The listening address and one access record per request at INFO, unless --log-level
    asks for errors only."""
    import logging

    from keybroker.service.observability import ACCESS_LOGGER
    from keybroker.service.server import SERVE_LOGGER

    if logging.getLogger().getEffectiveLevel() <= logging.WARNING:
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO)
        logging.getLogger(SERVE_LOGGER).setLevel(logging.INFO)


def run_broker_serve(args: argparse.Namespace) -> int:
    from keybroker.service.server import BrokerStartError, serve_forever
    from keybroker.service.workers import WorkerStartError

    _show_access_log()
    try:
        tls = server_tls(args)
        settings = BrokerSettings.load(args.state / BROKER_SETTINGS_FILE)
        if tls is None and not is_loopback_host(args.host):
            print(f"sealbeam: warning: serving plain HTTP on {args.host}", file=sys.stderr)
        log_setup = functools.partial(
            _worker_logging, getattr(args, "log_level", None), getattr(args, "log_format", None)
        )
        serve_forever(settings, host=args.host, port=args.port, tls=tls, workers=args.workers,
                      log_setup=log_setup)
    except (ConfigError, PolicyError, KmsError, LedgerError, AttestationError,
            TlsConfigError, BrokerStartError, WorkerStartError) as error:
        print(f"sealbeam: error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    return 0
