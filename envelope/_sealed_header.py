"""Header bytes with their tag: assembling them when sealing, checking them when opening.

Joins ``envelope.header`` (layout, no key) and ``envelope._keyschedule`` (keys, no layout):
:func:`seal_header` writes core header || key block || HMAC tag, and
:func:`authenticate_parsed_header` checks commitment and tag of a parsed header before
anything is decrypted. Neither decrypts a payload nor looks at the body.
"""

from __future__ import annotations

from dataclasses import dataclass

from envelope._keyschedule import EnvelopeKeys, authenticate_header, header_tag
from envelope.header import EnvelopeHeader, HeaderLayout, encode_core_header, encode_key_block
from envelope.keys import DataKey, WrappedKey

__all__ = ["SealedHeader", "authenticate_parsed_header", "seal_header", "sealed_header_with"]


@dataclass(frozen=True)
class SealedHeader:
    """A header's wire bytes and, for segment AADs, its core part."""

    wire: bytes
    core: bytes


def seal_header(header: EnvelopeHeader, keys: EnvelopeKeys) -> SealedHeader:
    """The wire bytes of ``header``, ending with its tag under ``keys.header_key``."""
    return sealed_header_with(encode_core_header(header), header.wrapped_key, keys)


def sealed_header_with(core: bytes, wrapped_key: WrappedKey, keys: EnvelopeKeys) -> SealedHeader:
    """Core header bytes (already canonical), a key block for ``wrapped_key``, and the tag."""
    unauthenticated = bytes(core) + encode_key_block(wrapped_key)
    return SealedHeader(
        wire=unauthenticated + header_tag(keys.header_key, unauthenticated), core=bytes(core)
    )


def authenticate_parsed_header(
    view: memoryview, header: EnvelopeHeader, layout: HeaderLayout, data_key: DataKey
) -> EnvelopeKeys:
    """Check the commitment and the header tag of an already parsed header; its keys."""
    return authenticate_header(
        data_key,
        salt=header.salt,
        algorithm=header.algorithm,
        commitment=header.commitment,
        unauthenticated_header=view[: layout.tag_start],
        stored_tag=view[layout.tag_start : layout.end],
    )
