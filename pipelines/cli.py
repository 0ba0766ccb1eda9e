"""The ``sealbeam`` command line: argparse over the subcommand modules in ``commands/``.

What it does: builds one parser, lets every module of ``pipelines/commands`` register its
subcommands (``register(subparsers)``), runs the chosen handler and turns errors a user can
cause (bad options, missing files, refused keys, failed checks) into one line on stderr and
exit status 2.

What it does not: no work of its own; handlers call library functions that tests use directly.
Unexpected exceptions (bugs) are not hidden.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Fixed order, as ``sealbeam --help`` lists them.
COMMAND_MODULES = ("keys", "broker", "audit", "attest", "features", "residency", "seal", "open",
                   "run", "demo")

# Log lines that Beam and its optional GCP extras print on import: they describe packages the
# local runner does not need, and would otherwise open every command's output.
_IMPORT_NOISE = ("apitools not found", "Failed to import GCSFileSystem")


def _user_errors() -> tuple[type[BaseException], ...]:
    """The errors a user can cause; imported late so that logging is set up before Beam loads."""
    from enclave_workers.features import FeatureError
    from enclave_workers.key_session import KeySessionError
    from enclave_workers.records import RecordError
    from envelope import EnvelopeError
    from keybroker.client import BrokerError
    from keybroker.kms.base import KmsError
    from keybroker.ledger import LedgerError
    from transforms import TransformError

    from .errors import PipelineError

    return (
        PipelineError, TransformError, EnvelopeError, KmsError, BrokerError, LedgerError,
        FeatureError, RecordError, KeySessionError, OSError,
    )


def _configure_logging() -> None:
    """Warnings to stderr, without the import-time notices of packages we do not use."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("sealbeam: %(levelname)s: %(name)s: %(message)s"))
    handler.addFilter(lambda record: not record.getMessage().startswith(_IMPORT_NOISE))
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(handler)
        root.setLevel(logging.WARNING)


USAGE_EXIT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sealbeam",
        description="Encrypted data pipelines on Apache Beam with attested key release.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        module_name = f"{__package__}.commands.{name}"
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _configure_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except _user_errors() as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"sealbeam: error: {message}", file=sys.stderr)
        return USAGE_EXIT
    except KeyboardInterrupt:
        print("sealbeam: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
