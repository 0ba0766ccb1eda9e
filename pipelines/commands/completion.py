"""``sealbeam completion bash|zsh``: print a shell completion script.

Install with ``source <(sealbeam completion bash)`` (or write it to
``/etc/bash_completion.d/sealbeam``); zsh: ``source <(sealbeam completion zsh)``.
"""

from __future__ import annotations

import argparse

from pipelines.completion import SHELLS, completion_script


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "completion", help="print a shell completion script (bash or zsh)",
        description="Print a completion script for sealbeam's commands and options, generated "
                    "from this parser: `source <(sealbeam completion bash)`.")
    parser.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    parser.set_defaults(func=run_completion)


def run_completion(args: argparse.Namespace) -> int:
    from pipelines.cli import build_parser

    print(completion_script(build_parser(), args.shell), end="")
    return 0
