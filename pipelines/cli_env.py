"""``SEALBEAM_*`` environment variables as defaults for the command line's common options.

What it does: ``ENV_OPTIONS`` maps an option (``--state``, ``--broker_url``, ...) to its
variable; ``apply_environment(parser)`` walks every subcommand and, where the variable is set,
makes it the option's default (validated against the option's type and choices, so a bad value
fails at start with one line) and no longer required. A flag on the command line still wins.
``leaf_parsers`` lists the parsers that run a handler (for the shared options).

What it does not: it reads nothing else from the environment and never reads secrets from it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

__all__ = ["ENV_OPTIONS", "EnvironmentOptionError", "apply_environment", "describe",
           "env_choice", "env_default", "leaf_parsers"]

ENV_OPTIONS = {
    "--state": "SEALBEAM_STATE",
    "--broker_url": "SEALBEAM_BROKER_URL",
    "--tee": "SEALBEAM_TEE",
    "--dev_tee_dir": "SEALBEAM_DEV_TEE_DIR",
    "--region": "SEALBEAM_REGION",
    "--producer": "SEALBEAM_PRODUCER",
    "--feature_spec": "SEALBEAM_FEATURE_SPEC",
}
SHARED_VARIABLES = ("SEALBEAM_LOG_LEVEL", "SEALBEAM_LOG_FORMAT", "SEALBEAM_PROGRESS")


class EnvironmentOptionError(ValueError):
    """A ``SEALBEAM_*`` variable holds a value its option does not accept."""


def env_default(variable: str, default: str) -> str:
    value = os.environ.get(variable, "")
    return value if value else default


def env_choice(variable: str, default: str, choices: tuple[str, ...]) -> str:
    """``env_default``, refused with one line when the value is not one of ``choices``."""
    value = env_default(variable, default)
    if value not in choices:
        raise EnvironmentOptionError(f"{variable}={value!r}: expected one of "
                                     f"{', '.join(choices)}")
    return value


def describe() -> str:
    pairs = [f"{variable} ({option})" for option, variable in ENV_OPTIONS.items()]
    return ", ".join([*pairs, *SHARED_VARIABLES]) + " supply defaults; flags win."


def _subparsers_of(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for child in action.choices.values():
                if id(child) not in seen:  # aliases map several names to one parser
                    seen.add(id(child))
                    yield child


def leaf_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser below ``parser`` that has no subcommands of its own."""
    children = list(_subparsers_of(parser))
    for child in children:
        grandchildren = list(_subparsers_of(child))
        if grandchildren:
            yield from leaf_parsers(child)
        else:
            yield child


def _all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for child in _subparsers_of(parser):
        yield from _all_parsers(child)


def apply_environment(parser: argparse.ArgumentParser) -> None:
    """Set option defaults from ``SEALBEAM_*`` variables, in every (sub)parser."""
    for each in _all_parsers(parser):
        for action in each._actions:
            variable = next((ENV_OPTIONS[o] for o in action.option_strings
                             if o in ENV_OPTIONS), None)
            if variable is None:
                continue
            if action.help and action.help is not argparse.SUPPRESS and variable not in \
                    action.help:
                action.help = f"{action.help} (env {variable})"
            value = os.environ.get(variable)
            if not value:
                continue
            converted = _convert(action, value, variable)
            action.default = converted
            action.required = False


def _convert(action: argparse.Action, value: str, variable: str) -> object:
    try:
        converted = action.type(value) if callable(action.type) else value
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        raise EnvironmentOptionError(f"{variable}={value!r}: {exc}") from None
    if action.choices is not None and converted not in action.choices:
        raise EnvironmentOptionError(
            f"{variable}={value!r}: expected one of {', '.join(map(str, action.choices))}")
    return converted
