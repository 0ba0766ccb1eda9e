"""Cloud locations as sets of member regions, so "is this sink inside that region" is a subset test.

What it does: ``member_regions`` expands a location name to the cloud regions its data may sit
in: a GCS multi-region (``EU``, ``US``, ``ASIA``) or predefined dual-region (``EUR4``,
``NAM4`` ...) to its member regions, a GCS zone (``europe-west4-a``) to its region, any other
name (a GCS region, an Azure region, ``local``) to itself, lowercased. ``location_allowed``
says whether every member region of a location is a member of some allowed location.
``azure_paired_region`` is Azure's documented region pair, where geo-redundant storage (GRS,
RA-GRS, GZRS, RA-GZRS) replicates an account whose management API does not name its secondary.

What it does not: ask any cloud; the tables are Google's and Microsoft's published lists as of
2025 (a location missing here is treated as a region of its own, so an unknown multi-region
is refused rather than widened).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "AZURE_GEO_REDUNDANT_SKUS",
    "GCS_DUAL_REGIONS",
    "GCS_MULTI_REGIONS",
    "LOCAL",
    "azure_paired_region",
    "location_allowed",
    "member_regions",
    "zone_region",
]

LOCAL = "local"
"""The location of a ``file://`` sink and of workers on the machine that runs the pipeline."""

GCS_MULTI_REGIONS: dict[str, frozenset[str]] = {
    "eu": frozenset({
        "europe-central2", "europe-north1", "europe-southwest1", "europe-west1",
        "europe-west3", "europe-west4", "europe-west8", "europe-west9", "europe-west10",
        "europe-west12",
    }),
    "us": frozenset({
        "us-central1", "us-east1", "us-east4", "us-east5", "us-south1", "us-west1",
        "us-west2", "us-west3", "us-west4",
    }),
    "asia": frozenset({
        "asia-east1", "asia-east2", "asia-northeast1", "asia-northeast2", "asia-northeast3",
        "asia-south1", "asia-south2", "asia-southeast1", "asia-southeast2",
    }),
}
GCS_DUAL_REGIONS: dict[str, frozenset[str]] = {
    "asia1": frozenset({"asia-northeast1", "asia-northeast2"}),
    "eur4": frozenset({"europe-north1", "europe-west4"}),
    "eur5": frozenset({"europe-west1", "europe-west2"}),
    "eur7": frozenset({"europe-west2", "europe-west3"}),
    "eur8": frozenset({"europe-west3", "europe-west6"}),
    "nam4": frozenset({"us-central1", "us-east1"}),
}
# Cloud KMS names its multi-regions "europe", "us", "asia" (a key ring's location).
GCS_MULTI_REGIONS["europe"] = GCS_MULTI_REGIONS["eu"]
_AZURE_PAIRS = (
    ("westeurope", "northeurope"), ("germanywestcentral", "germanynorth"),
    ("francecentral", "francesouth"), ("swedencentral", "swedensouth"),
    ("norwayeast", "norwaywest"), ("switzerlandnorth", "switzerlandwest"),
    ("uksouth", "ukwest"), ("eastus", "westus"), ("eastus2", "centralus"),
    ("northcentralus", "southcentralus"), ("westus2", "westcentralus"),
    ("westus3", "eastus"), ("canadacentral", "canadaeast"), ("japaneast", "japanwest"),
    ("australiaeast", "australiasoutheast"), ("southeastasia", "eastasia"),
    ("centralindia", "southindia"), ("koreacentral", "koreasouth"),
    ("brazilsouth", "southcentralus"), ("uaenorth", "uaecentral"),
    ("southafricanorth", "southafricawest"),
)
_AZURE_PAIR: dict[str, str] = {}
for _primary, _secondary in _AZURE_PAIRS:
    _AZURE_PAIR.setdefault(_primary, _secondary)
    _AZURE_PAIR.setdefault(_secondary, _primary)

AZURE_GEO_REDUNDANT_SKUS = frozenset({
    "standard_grs", "standard_ragrs", "standard_gzrs", "standard_ragzrs",
})
_GCS_ZONE = re.compile(r"^([a-z]+-[a-z]+[0-9]+)-[a-z]$")


def zone_region(location: str) -> str:
    """``europe-west4-a`` -> ``europe-west4``; anything else lowercased as it is."""
    lowered = location.strip().lower()
    match = _GCS_ZONE.match(lowered)
    return match.group(1) if match else lowered


def member_regions(location: str) -> frozenset[str]:
    """The regions data in ``location`` may be stored in (see the module docstring)."""
    lowered = zone_region(location)
    if lowered in GCS_MULTI_REGIONS:
        return GCS_MULTI_REGIONS[lowered]
    if lowered in GCS_DUAL_REGIONS:
        return GCS_DUAL_REGIONS[lowered]
    return frozenset({lowered})


def location_allowed(location: str | Iterable[str], allowed: Iterable[str]) -> bool:
    """Is every member region of ``location`` (one name, or several regions) inside the
    allowed locations' members?"""
    names = [location] if isinstance(location, str) else list(location)
    members = frozenset().union(*(member_regions(name) for name in names))
    permitted = frozenset().union(*(member_regions(name) for name in allowed))
    return bool(members) and members <= permitted


def azure_paired_region(region: str) -> str | None:
    """Azure's paired region of ``region`` (where GRS replicates), or None if it has none."""
    return _AZURE_PAIR.get(region.strip().lower())
