"""Residency maps with ``file://`` sinks, and the destinations the broker's ledger recorded.

Shared by the tests that run a mapped pipeline on this machine (batch or streaming, local or
on the pool) and then check which sink and location each region's ``generate`` entries name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from keybroker.config import BrokerSettings
from pipelines.synthetic import REGIONS
from tests.support.broker import ledger_entries

__all__ = ["file_residency_map", "granted_destinations", "ledger_head"]


def file_residency_map(path: Path, settings: BrokerSettings, root: Path, *,
                       eu_locations: Sequence[str] = ("local",),
                       unrouted: str = "quarantine") -> Path:
    """Write a map that puts each region's outputs and dead letters under ``root``
    (``<region>-out``, ``<region>-dl``, unrouted ones under ``root/unrouted``); eu is allowed
    ``eu_locations``, the other regions this machine."""
    regions = {r: {"locations": list(eu_locations) if r == "eu" else ["local"],
                   "kek": settings.region_keks[r], "local_kek": True,
                   "sink": f"file://{root}/{r}-out", "dead_letter_sink": f"file://{root}/{r}-dl",
                   "worker_locations": ["local"]} for r in REGIONS}
    path.write_text(json.dumps({"version": 1, "regions": regions,
                                "unrouted_dead_letter_sink": f"file://{root}/{unrouted}"}))
    return path


def ledger_head(settings: BrokerSettings) -> int:
    """The sequence number of the ledger's newest entry; 0 when it is empty."""
    entries = ledger_entries(settings)
    return entries[-1].seq if entries else 0


def granted_destinations(settings: BrokerSettings, after: int) -> dict[str, set[str]]:
    """Region -> the destinations (JSON) of the granted ``generate`` entries after ``after``."""
    found: dict[str, set[str]] = {}
    for entry in ledger_entries(settings, "generate"):
        if entry.seq > after and entry.decision == "granted":
            found.setdefault(str(entry.details["region"]), set()).add(
                json.dumps(entry.details.get("destination"), sort_keys=True))
    return found
