"""Subcommands of ``sealbeam``: each module exposes ``register(subparsers)``."""
