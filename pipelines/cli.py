"""The ``sealbeam`` command line: argparse over the subcommand modules in ``commands/``.

What it does: builds one parser, lets every module of ``pipelines/commands`` register its
subcommands (``register(subparsers)``), adds the options every command shares (``--log-level``,
``--log-format``, ``--progress``; before or after the command name), lets ``SEALBEAM_*``
environment variables supply the common options (``SEALBEAM_STATE`` for ``--state`` ...,
``cli_env.ENV_OPTIONS``), runs the chosen handler and turns every error a user can cause (bad
options, missing files, refused keys, failed checks, an unreachable broker inside a Beam run)
into one line on stderr and exit status 2; ``--log-level debug`` adds the traceback.

What it does not: no work of its own; handlers call library functions that tests use directly.
Unexpected exceptions (bugs) are not hidden.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from keybroker.logs import LOG_FORMATS, LOG_LEVELS, configure_logging

from . import cli_env, progress

# Fixed order, as ``sealbeam --help`` lists them.
COMMAND_MODULES = ("keys", "broker", "audit", "attest", "features", "residency", "seal", "open",
                   "unseal",
                   "run", "feed", "demo", "completion", "custody", "worker")

USAGE_EXIT = 2
_log = logging.getLogger("sealbeam.cli")

# Optional packages by top-level module name -> the setup.py extra that installs them.
EXTRA_OF_MODULE = {
    "apache_beam": "worker", "fastapi": "broker", "uvicorn": "broker", "starlette": "broker",
    "prometheus_client": "broker", "google": "gcp", "google_crc32c": "gcp", "grpc": "gcp",
    "azure": "azure", "pkcs11": "pkcs11",
}


def missing_extra(exc: BaseException) -> str | None:
    """The one-line message for an optional package that is not installed, else None."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    extra = EXTRA_OF_MODULE.get(exc.name.split(".")[0])
    if extra is None:
        return None
    return (f"this needs the '{extra}' extra (no module {exc.name!r}): "
            f"pip install 'sealbeam[{extra}]'")


def _register_unavailable(subparsers: argparse._SubParsersAction, name: str,
                          message: str) -> None:
    """A command whose module cannot import here: listed, and one line when run."""
    parser = subparsers.add_parser(name, help=f"(unavailable: {message})", add_help=False)
    parser.add_argument("rest", nargs=argparse.REMAINDER)

    def unavailable(_args: argparse.Namespace) -> int:
        print(f"sealbeam: error: sealbeam {name}: {message}", file=sys.stderr)
        return USAGE_EXIT

    parser.set_defaults(func=unavailable)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``--help`` shows the usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(USAGE_EXIT, f"sealbeam: error: {self.prog}: {message} (see --help)\n")


def _user_errors() -> tuple[type[BaseException], ...]:
    """The errors a user can cause; imported late so that logging is set up before Beam loads."""
    from enclave_workers.evidence.base import EvidenceUnavailableError
    from enclave_workers.features import FeatureError
    from enclave_workers.key_session import KeySessionError
    from enclave_workers.records import RecordError
    from envelope import EnvelopeError
    from keybroker.attestation.errors import AttestationError
    from keybroker.client import BrokerError
    from keybroker.config import ConfigError
    from keybroker.kms.base import KmsError
    from keybroker.ledger import LedgerError
    from keybroker.policy import PolicyError

    from .errors import PipelineError

    errors: tuple[type[BaseException], ...] = (
        PipelineError, EnvelopeError, KmsError, BrokerError, LedgerError,
        FeatureError, RecordError, KeySessionError, ConfigError, PolicyError, AttestationError,
        EvidenceUnavailableError, OSError,
    )
    try:
        from transforms import TransformError
    except ModuleNotFoundError as exc:  # no Beam here (the 'worker' extra): no transforms
        if missing_extra(exc) is None:
            raise
        return errors
    return (*errors, TransformError)


def version_text() -> str:
    """``sealbeam <version>`` from the installed distribution (the source tree's otherwise)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"sealbeam {version('sealbeam')}"
    except PackageNotFoundError:
        return "sealbeam (not installed)"


def _add_shared_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Options every command takes; on subcommands they default to SUPPRESS so that a value
    given before the command name is not reset by the subparser."""
    default = (lambda value: value) if top else (lambda _value: argparse.SUPPRESS)
    group = parser.add_argument_group("shared options")
    group.add_argument("--log-level", choices=LOG_LEVELS,
                       default=default(cli_env.env_choice("SEALBEAM_LOG_LEVEL", "warning",
                                                            LOG_LEVELS)),
                       help="log verbosity on stderr; 'debug' adds tracebacks to errors "
                            "(env SEALBEAM_LOG_LEVEL; default warning)")
    group.add_argument("--log-format", choices=LOG_FORMATS,
                       default=default(cli_env.env_choice("SEALBEAM_LOG_FORMAT", "text",
                                                            LOG_FORMATS)),
                       help="log lines as text or JSON (env SEALBEAM_LOG_FORMAT; default text)")
    group.add_argument("--progress", choices=progress.MODES,
                       default=default(cli_env.env_choice("SEALBEAM_PROGRESS", "auto",
                                                            progress.MODES)),
                       help="progress on stderr: a bar when stderr is a terminal, a status "
                            "line every 10 s otherwise (auto), always a bar, or never "
                            "(env SEALBEAM_PROGRESS; default auto)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="sealbeam",
        description="Encrypted data pipelines on Apache Beam with attested key release.",
        epilog="Environment: " + cli_env.describe(),
    )
    parser.add_argument("--version", action="version", version=version_text())
    _add_shared_options(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        module_name = f"{__package__}.commands.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            message = missing_extra(exc)
            if message is None:
                raise
            _register_unavailable(subparsers, name, message)
            continue
        module.register(subparsers)
    for leaf in cli_env.leaf_parsers(parser):
        _add_shared_options(leaf, top=False)
    cli_env.apply_environment(parser)
    return parser


def _user_error_in(exc: BaseException, user_errors: tuple[type[BaseException], ...]
                   ) -> BaseException | None:
    """``exc`` or the first user error it was raised from (Beam wraps DoFn errors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, user_errors):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging("warning")
    try:
        parser = build_parser()
    except cli_env.EnvironmentOptionError as exc:
        print(f"sealbeam: error: {exc}", file=sys.stderr)
        return USAGE_EXIT
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    progress.configure(args.progress)
    user_errors = _user_errors()
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("sealbeam: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # re-raised below unless a user error is inside
        cause = _user_error_in(exc, user_errors)
        message = one_line(cause) if cause is not None else missing_extra(exc)
        if message is None:
            raise
        _log.debug("%s failed", args.command, exc_info=exc)
        print(f"sealbeam: error: {message}", file=sys.stderr)
        return USAGE_EXIT


if __name__ == "__main__":
    sys.exit(main())
