"""The pool worker's command line: ``sealbeam worker serve`` (``python -m enclave_workers.pool``).

What it does: parses the serve flags, builds the worker (feature spec, TEE provider, key
session), attests to the broker (a refusal ends the command with one line, status 2: fail
closed), binds the HTTP server and prints one JSON line ``{"url": ..., "spec_fingerprint":
..., "simulated": ...}`` on stdout once it is ready (``--port 0`` picks a free port), then
serves until interrupted.

``sealbeam worker serve`` (``pipelines/commands/worker.py``) replaces its own process with
this module, so a pool process never imports Beam or the rest of the CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from collections.abc import Sequence

from enclave_workers.batch_processor import OUTPUT_FORMATS, SEALED_ARROW, default_feature_spec
from enclave_workers.evidence.base import EvidenceUnavailableError
from enclave_workers.features import FeatureError, FeatureSpec
from enclave_workers.key_session import KeySessionError
from keybroker.client import BrokerError

from .server import DEFAULT_MAX_INFLIGHT, DEFAULT_MAX_REQUEST_BYTES, PoolServer
from .tee import POOL_TEES
from .worker import PoolMismatchError, PoolSettings, build_pool_worker

__all__ = ["add_serve_arguments", "main", "serve_from_args"]

USAGE_EXIT = 2


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``worker serve`` (shared with ``sealbeam worker serve``)."""
    parser.add_argument("--broker_url", required=True, help="base URL of the key broker")
    parser.add_argument("--tee", default=POOL_TEES[0], choices=POOL_TEES,
                        help="the TEE this worker attests as")
    parser.add_argument("--dev_tee_dir", default=None,
                        help="dev chain of a simulated TEE (SEV-SNP: STATE/dev-tee; TDX: the "
                             "directory made by create_dev_tdx_chain)")
    parser.add_argument("--worker_location", default=None,
                        help="simulated-sev-snp only: the location its evidence claims "
                             "(HOST_DATA), for worker_locations rules and residency preflight")
    parser.add_argument("--broker_identity", default=None,
                        help="the broker's public identity key (PEM) every grant is verified "
                             "with (default for a simulated TEE: broker-identity.pub.pem beside "
                             "--dev_tee_dir); the worker refuses to start without one")
    parser.add_argument("--broker_ca_bundle", default=None,
                        help="CA certificates (PEM) an https:// broker must chain to")
    parser.add_argument("--broker_pinned_cert", default=None,
                        help="the broker's own TLS certificate (PEM), trusted alone")
    parser.add_argument("--audience", default=None,
                        help="Confidential Space: the token audience the broker expects")
    parser.add_argument("--feature_spec", default=None,
                        help="feature spec (YAML) this worker runs; default: the shipped spec")
    parser.add_argument("--output_format", default=SEALED_ARROW, choices=OUTPUT_FORMATS,
                        help="the output format this worker writes")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: a free one)")
    parser.add_argument("--max_inflight", type=int, default=DEFAULT_MAX_INFLIGHT,
                        help="requests handled at once; one more gets 429 + Retry-After")
    parser.add_argument("--max_request_bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                        help="largest request body accepted (413 above)")
    parser.add_argument("--key_ttl_s", type=float, default=300.0,
                        help="seconds a released key stays cached")
    parser.add_argument("--require_destination", action="store_true",
                        help="refuse a batch that does not name its destination (region, "
                             "sink, location), so every output key's ledger entry says where "
                             "its outputs go; default: such a batch's keys record none")
    parser.add_argument("--require_routes", action="store_true",
                        help="refuse a batch sent without each envelope's routing facts "
                             "(key id, region, producer), which the TEE checks against every "
                             "header; default: such a batch (from a client older than routes) "
                             "is processed without that check")


def _spec(path: str | None) -> FeatureSpec:
    return default_feature_spec() if path is None else FeatureSpec.load(path)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def serve_from_args(args: argparse.Namespace) -> int:
    try:
        worker = build_pool_worker(PoolSettings(
            broker_url=args.broker_url, tee=args.tee, dev_tee_dir=args.dev_tee_dir,
            spec=_spec(args.feature_spec), output_format=args.output_format,
            key_ttl_s=args.key_ttl_s, audience=args.audience,
            broker_identity=args.broker_identity, broker_ca_bundle=args.broker_ca_bundle,
            broker_pinned_cert=args.broker_pinned_cert, location=args.worker_location,
            require_destination=args.require_destination, require_routes=args.require_routes))
        worker.start()
        server = PoolServer(worker, args.host, args.port, max_inflight=args.max_inflight,
                            max_request_bytes=args.max_request_bytes)
    except (BrokerError, FeatureError, KeySessionError, EvidenceUnavailableError,
            PoolMismatchError, ValueError, OSError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"sealbeam worker: error: {message}", file=sys.stderr)
        return USAGE_EXIT
    signal.signal(signal.SIGTERM, _interrupt)
    print(json.dumps({"url": server.url, "spec_fingerprint": worker.spec_fingerprint,
                      "output_format": worker.output_format,
                      "simulated": args.tee.startswith("simulated-")}), flush=True)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
    finally:
        server.server_close()
        worker.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sealbeam worker serve",
        description="Serve the enclave worker as an attested pool: attest to the broker, "
                    "accept sealed batches, return sealed outputs and sealed dead letters.")
    add_serve_arguments(parser)
    return serve_from_args(parser.parse_args(argv))

