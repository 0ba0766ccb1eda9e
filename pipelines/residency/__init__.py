"""Residency: the map of where each data region's outputs may live and who may process it.

What it does: ``ResidencyMap`` (``residency_map``) loads and validates the YAML map;
``SinkUrl`` (``sinks``) parses sink URLs; ``locations`` expands cloud locations to member
regions. ``pipelines.preflight`` checks the map against where sinks and workers really are.

What it does not: write outputs (``transforms.write``) or decide key release (the broker's
policy, ``worker_locations`` rules).
"""

from __future__ import annotations

from .locations import LOCAL, location_allowed, member_regions
from .residency_map import (
    AzureAccount,
    MapProblem,
    RegionResidency,
    ResidencyMap,
    ResidencyMapError,
)
from .sinks import SinkUrl, SinkUrlError

__all__ = [
    "LOCAL",
    "AzureAccount",
    "MapProblem",
    "RegionResidency",
    "ResidencyMap",
    "ResidencyMapError",
    "SinkUrl",
    "SinkUrlError",
    "location_allowed",
    "member_regions",
]
