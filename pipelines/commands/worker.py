"""``sealbeam worker serve``: run the enclave worker as an attested pool service.

The flags are those of ``enclave_workers.pool.cli`` (parsed here for ``--help`` and early
errors). The command then replaces this process with ``python -m enclave_workers.pool`` and
the same flags, so the serving process never imports Beam, the broker's KMS backends or the
rest of the CLI: what runs in the TEE is the pool's small import closure
(``tests/pool/test_import_boundary.py``).
"""

from __future__ import annotations

import argparse
import os
import sys

from enclave_workers.pool.cli import add_serve_arguments

__all__ = ["pool_argv", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    worker = subparsers.add_parser("worker", help="run the enclave worker as a service")
    commands = worker.add_subparsers(dest="worker_command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve", help="serve sealed batches to Beam workers from inside the TEE",
        description="Attest to the broker, then accept sealed batches over HTTP and return "
                    "sealed outputs and sealed dead letters (docs/PROTOCOL.md, 'Attested "
                    "worker pool'). Prints one JSON line with its URL when ready.")
    add_serve_arguments(serve)
    serve.set_defaults(func=run_worker_serve)


def pool_argv(args: argparse.Namespace) -> list[str]:
    """The pool module's command line for the parsed flags."""
    probe = argparse.ArgumentParser(add_help=False)
    add_serve_arguments(probe)
    names = [action.dest for action in probe._actions]
    values = [(name, getattr(args, name, None)) for name in names]
    # An on/off flag (store_true) is passed bare when on, left out when off.
    flags = [f"--{name}" if value is True else f"--{name}={value}" for name, value in values
             if value is not None and value is not False]
    return [sys.executable, "-m", "enclave_workers.pool", *flags]


def run_worker_serve(args: argparse.Namespace) -> int:
    argv = pool_argv(args)
    sys.stdout.flush()
    os.execv(argv[0], argv)   # noqa: S606 (our own interpreter, fixed arguments)
    return 0   # not reached: execv replaces the process
