"""The release policy's errors: one base, and the one for a malformed policy document.

What it does: gives callers (the broker, the CLI) one class to catch for "the policy file is
unusable". What it does not: describe denials; a denial is a `Decision`, not an error.
"""

from __future__ import annotations

__all__ = ["PolicyError", "PolicyFormatError"]


class PolicyError(Exception):
    """Base of the policy's errors."""


class PolicyFormatError(PolicyError):
    """The policy file is malformed; the message names the field."""
