"""Errors raised by sealbeam's Beam transforms when they are configured wrongly.

What it does: one base (``TransformError``) for this room. Data problems are never raised:
they become dead letters; only a transform that cannot work at all raises.
"""

from __future__ import annotations


class TransformError(Exception):
    """Base of errors raised by ``transforms``."""


class TransformConfigError(TransformError):
    """A transform was given settings it cannot work with (unknown TEE, bad region name)."""
