"""The envelope room's errors: one base class and four kinds of failure.

Structural problems (a bad magic, a length over its bound, an unsorted context) raise
:class:`EnvelopeFormatError` or :class:`EnvelopeLimitError` with a message that names the
field. Every cryptographic failure raises :class:`EnvelopeAuthenticationError` with one
fixed message, so that no failure detail can become a decryption oracle. This module does
not decide *when* to raise; the parsers and openers do.
"""

from __future__ import annotations

__all__ = [
    "EnvelopeAuthenticationError",
    "EnvelopeError",
    "EnvelopeFormatError",
    "EnvelopeLimitError",
    "KeyTransportError",
    "RecordIndexError",
]

AUTHENTICATION_FAILED = "envelope authentication failed"
KEY_TRANSPORT_FAILED = "key transport failed"


class EnvelopeError(Exception):
    """Base of every error the envelope room raises."""


class EnvelopeFormatError(EnvelopeError):
    """The bytes are not a well-formed envelope; the message names the field."""


class EnvelopeLimitError(EnvelopeFormatError):
    """A length or count is over its documented bound (checked before any allocation)."""


class RecordIndexError(EnvelopeFormatError):
    """Record indices asked of a record stream are not distinct indices of its records."""


class EnvelopeAuthenticationError(EnvelopeError):
    """Any cryptographic failure: tag, key commitment or header authentication.

    The message is always the same, whatever failed, so callers cannot tell the cases apart.
    """

    def __init__(self, *_ignored: object) -> None:
        # Arguments are accepted (so the error pickles and re-raises) but never shown.
        super().__init__(AUTHENTICATION_FAILED)


class KeyTransportError(EnvelopeError):
    """HPKE key transport failed, or a TEE public key / transport input is malformed."""
