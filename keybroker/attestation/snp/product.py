"""AMD EPYC product lines for SEV-SNP: names, CPUID mapping and per-product sizes.

What it does: tells Milan, Genoa and Turin apart from a certificate name ("SEV-Milan",
"ARK-Genoa", "SEV-VLEK-Turin"), a VCEK product-name extension ("Milan-B0") or the v3+
report's CPUID family/model, and gives the per-product hwID size. What it does not:
decide trust; a product named here still has to chain to a pinned root.
"""

from __future__ import annotations

import re

__all__ = [
    "PRODUCTS",
    "cpuid_for_product",
    "hwid_size",
    "product_from_common_name",
    "product_from_cpuid",
    "product_from_product_name",
]

PRODUCTS = ("Milan", "Genoa", "Turin")

_COMMON_NAME = re.compile(r"^(?:ARK|SEV-VLEK|SEV|ASVK)-(Milan|Genoa|Turin)(?![A-Za-z0-9])")
_PRODUCT_NAME = re.compile(r"^(Milan|Genoa|Turin)(?:-[A-Z][0-9])?$")

# (family, model, stepping) written by the simulated attester; real chips vary the stepping.
_CPUID = {"Milan": (0x19, 0x01, 0x01), "Genoa": (0x19, 0x11, 0x01), "Turin": (0x1A, 0x02, 0x00)}


def product_from_common_name(common_name: str) -> str | None:
    """The product an AMD (or dev) ARK/ASK/ASVK common name names, or None."""
    match = _COMMON_NAME.match(common_name)
    return match.group(1) if match else None


def product_from_product_name(product_name: str) -> str | None:
    """The product of a VCEK/VLEK productName extension ("Milan-B0", "Genoa"), or None."""
    match = _PRODUCT_NAME.match(product_name)
    return match.group(1) if match else None


def product_from_cpuid(family: int, model: int) -> str | None:
    """Product from the report's CPUID_FAM_ID / CPUID_MOD_ID (v3+), as the KDS spec maps them."""
    if family == 0x19:
        if model <= 0x0F:
            return "Milan"
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return "Genoa"
    if family == 0x1A and model <= 0x11:
        return "Turin"
    return None


def cpuid_for_product(product: str) -> tuple[int, int, int]:
    """(family, model, stepping) that a report from `product` carries."""
    if product not in _CPUID:
        raise ValueError(f"unknown SEV-SNP product {product!r}; expected one of {PRODUCTS}")
    return _CPUID[product]


def hwid_size(product: str) -> int:
    """Bytes of CHIP_ID that a VCEK's hwID extension carries: 8 on Turin, 64 before."""
    if product not in PRODUCTS:
        raise ValueError(f"unknown SEV-SNP product {product!r}; expected one of {PRODUCTS}")
    return 8 if product == "Turin" else 64
