"""The SEV-SNP TCB_VERSION (a 64-bit field of security patch levels), per product.

What it does: splits the raw u64 into named components and joins them back. Milan and
Genoa: bootloader byte 0, tee byte 1, snp byte 6, microcode byte 7. Turin: fmc byte 0,
bootloader 1, tee 2, snp 3, microcode 7. What it does not: compare against minimum
versions; that is the release policy's job.
"""

from __future__ import annotations

from collections.abc import Mapping

from keybroker.attestation.snp.product import PRODUCTS

__all__ = ["TCB_COMPONENTS", "decode_tcb", "encode_tcb"]

_BYTE_POSITIONS: dict[str, dict[str, int]] = {
    "Milan": {"bootloader": 0, "tee": 1, "snp": 6, "microcode": 7},
    "Genoa": {"bootloader": 0, "tee": 1, "snp": 6, "microcode": 7},
    "Turin": {"fmc": 0, "bootloader": 1, "tee": 2, "snp": 3, "microcode": 7},
}

TCB_COMPONENTS = {product: tuple(positions) for product, positions in _BYTE_POSITIONS.items()}


def _positions(product: str) -> dict[str, int]:
    if product not in PRODUCTS:
        raise ValueError(f"unknown SEV-SNP product {product!r}; expected one of {PRODUCTS}")
    return _BYTE_POSITIONS[product]


def decode_tcb(raw: int, product: str) -> dict[str, int]:
    """Named security patch levels of a raw TCB_VERSION for `product`."""
    if not 0 <= raw < 1 << 64:
        raise ValueError("TCB_VERSION must be an unsigned 64-bit value")
    return {name: (raw >> (8 * byte)) & 0xFF for name, byte in _positions(product).items()}


def encode_tcb(parts: Mapping[str, int], product: str) -> int:
    """Raw TCB_VERSION from named components; every component of `product` is required."""
    positions = _positions(product)
    unknown = set(parts) - set(positions)
    if unknown:
        raise ValueError(f"TCB components {sorted(unknown)} do not exist on {product}")
    raw = 0
    for name, byte in positions.items():
        if name not in parts:
            raise ValueError(f"TCB component {name!r} missing for {product}")
        value = parts[name]
        if not 0 <= value <= 0xFF:
            raise ValueError(f"TCB component {name!r} must fit in one byte")
        raw |= value << (8 * byte)
    return raw
