"""Which region's key an output needs, read from the output's own bytes.

What it does: for a sealed batch envelope, the region in its header; for a PME Parquet file,
the region in its footer key's wrapped blob (``pme_footer`` + ``enclave_workers.pme_keys``),
after checking that the blob names the master key the footer names. ``RouteByRegion`` routes
by it and ``WriteRegionPinned`` refuses a destination unlike it, so a file can never land in
a region whose readers would need another region's KEK.

What it does not: no key, no decryption: it reads only what the formats leave in plaintext.
"""

from __future__ import annotations

from enclave_workers.batch_processor import PARQUET_PME, SEALED_ARROW, SealedOutput
from enclave_workers.pme_keys import PmeKeyError, WrappedPmeKey
from envelope import EnvelopeError, read_header, read_stream_piece
from envelope.record_stream import EXCERPT_MAGIC

from .errors import TransformError
from .pme_footer import footer_key_blob

__all__ = ["OutputRegionError", "output_key", "output_key_region", "sealed_bytes_region"]


class OutputRegionError(TransformError):
    """An output's bytes do not say which region's key they need."""


def output_key_region(output: SealedOutput) -> str:
    """The region whose KEK wraps the key that opens ``output``."""
    return output_key(output)[0]


def output_key(output: SealedOutput) -> tuple[str, str]:
    """``(region, KEK URI)`` of the key that opens ``output`` (header, or PME footer key)."""
    if output.output_format == SEALED_ARROW:
        try:
            header, _ = read_header(output.payload)
        except EnvelopeError as exc:
            raise OutputRegionError(f"output is not a sealed envelope: {exc}") from None
        return header.region, header.wrapped_key.kek.uri
    if output.output_format == PARQUET_PME:
        footer = footer_key_blob(output.payload)
        try:
            blob = WrappedPmeKey.parse(footer.wrapped_blob)
        except PmeKeyError as exc:
            raise OutputRegionError(f"PME footer key: {exc}") from None
        if blob.master_key_id != footer.master_key_id:
            raise OutputRegionError("PME footer key blob names another master key than the "
                                    "footer")
        return blob.region, blob.wrapped_dek.kek.uri
    raise OutputRegionError(f"unknown output format {output.output_format!r}")


def sealed_bytes_region(sealed: bytes) -> str | None:
    """The region of sealed bytes of either format (a dead letter's), or None when they say
    none (not an envelope, not a PME file, empty). A record stream's one-record excerpt
    (``SBRX``, a dead letter of one record) or piece (a late or dead-lettered part of a
    stream) says the region of the stream's header."""
    if sealed[:4] == EXCERPT_MAGIC:
        try:
            return read_stream_piece(sealed).header.region
        except EnvelopeError:
            return None
    for output_format in (SEALED_ARROW, PARQUET_PME):
        try:
            return output_key(SealedOutput("", "", sealed, 0, 0, b"", output_format))[0]
        except TransformError:
            continue
    return None
