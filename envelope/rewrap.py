"""Rewrap: put an envelope's DEK under another KEK (version) without touching its payload.

An envelope's key block (KEK URI, KEK version, wrapped DEK) sits between its core header and
its header tag, and no segment AAD covers it (docs/FORMAT.md section 3.2). So moving a DEK
to a new KEK version means: check the key commitment and the current header tag with the
DEK, replace the key block, recompute the tag. Every byte after the header (all segment
frames, every ciphertext and GCM tag) stays identical, and the salt, envelope id and
commitment do not change.

- :func:`rewrap_envelope` works on a whole envelope in memory and also checks its body's
  structure (framing, no trailing bytes).
- :func:`rewrap_header` needs only a prefix that holds the header (at most
  ``MAX_HEADER_LENGTH`` bytes): the header is a prefix of the envelope, so a large batch file
  is rewritten by writing the new header and copying the rest of the file unchanged.

What it does not: it never decrypts or re-encrypts a payload, so it does not prove the
payload authentic (a tampered payload stays tampered and fails when opened); it does not
call a KMS (the caller unwraps the DEK and wraps it under the new KEK) and cannot tell
whether ``new_wrapped_key`` really wraps this DEK, which the caller should check.
"""

from __future__ import annotations

from envelope._sealed_header import authenticate_parsed_header, sealed_header_with
from envelope._wire import as_byte_view
from envelope.errors import EnvelopeFormatError
from envelope.framing import envelope_length
from envelope.header import parse_header
from envelope.keys import DataKey, WrappedKey

__all__ = ["rewrap_envelope", "rewrap_header"]


def rewrap_header(
    envelope_prefix: bytes | bytearray | memoryview,
    data_key: DataKey,
    new_wrapped_key: WrappedKey,
) -> tuple[bytes, int]:
    """The rewrapped header, and the length of the old header it replaces.

    ``envelope_prefix`` must start with the whole header; bytes after it are ignored. Raises
    :class:`EnvelopeFormatError` for structure and the uniform
    :class:`EnvelopeAuthenticationError` when the DEK or the current header does not check.
    """
    if not isinstance(new_wrapped_key, WrappedKey):
        raise EnvelopeFormatError(
            f"new wrapped key must be WrappedKey, not {type(new_wrapped_key).__name__}"
        )
    view = as_byte_view(envelope_prefix)
    header, layout = parse_header(view)
    keys = authenticate_parsed_header(view, header, layout, data_key)
    rewrapped = sealed_header_with(view[: layout.core_end], new_wrapped_key, keys)
    return rewrapped.wire, layout.end


def rewrap_envelope(
    envelope: bytes | bytearray | memoryview, data_key: DataKey, new_wrapped_key: WrappedKey
) -> bytes:
    """``envelope`` with its key block replaced by ``new_wrapped_key``; payload bytes unchanged.

    The whole of ``envelope`` must be one structurally complete envelope.
    """
    view = as_byte_view(envelope)
    length = envelope_length(view)
    if length != len(view):
        raise EnvelopeFormatError(f"{len(view) - length} trailing bytes after the envelope")
    new_header, old_header_length = rewrap_header(view, data_key, new_wrapped_key)
    return new_header + bytes(view[old_header_length:])
