"""Synthetic partner data for the demo and tests: people, e-mails, amounts, timestamps.

What it does: generates deterministic (seeded) partner records with direct identifiers
(``name``, ``email``), a ``customer_id``, an ``amount`` (log-normal), an ``event_time`` and a
``region`` across ``eu`` and ``us``, for two producers, and writes them as JSONL files split by
(producer, region) into several files each, ready for ``sealbeam seal``.

What it does not: nothing here is real personal data, and nothing is sealed here.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .errors import PipelineError

PRODUCERS = ("acme", "globex")
REGIONS = ("eu", "us")
AMOUNT_LOG_MEAN = 4.0
AMOUNT_LOG_SIGMA = 0.75
MAX_RECORDS = 10_000_000

_FIRST = ("Amelie", "Bartholomew", "Cordelia", "Desmond", "Evangeline", "Florian", "Genevieve",
          "Horatio", "Isolde", "Jasper", "Katarina", "Leopold", "Marguerite", "Nikolai",
          "Ophelia", "Percival", "Quintessa", "Rosalind", "Sebastian", "Theodora")
_LAST = ("Abernathy", "Blackwood", "Castellano", "Delacroix", "Eriksson", "Fairweather",
         "Grimaldi", "Hargreaves", "Ishikawa", "Jankowski", "Kowalczyk", "Lindqvist",
         "Montgomery", "Nakamura", "Oyelaran", "Petrakis", "Quiroga", "Rasmussen")
_EPOCH = datetime(2025, 1, 1, tzinfo=timezone.utc)


def amount_mean() -> float:
    """Mean of the log-normal amounts (what the demo standardizes with)."""
    return math.exp(AMOUNT_LOG_MEAN + AMOUNT_LOG_SIGMA ** 2 / 2)


def amount_std() -> float:
    """Standard deviation of the log-normal amounts."""
    variance = (math.exp(AMOUNT_LOG_SIGMA ** 2) - 1) * math.exp(
        2 * AMOUNT_LOG_MEAN + AMOUNT_LOG_SIGMA ** 2)
    return math.sqrt(variance)


@dataclass(frozen=True)
class PartnerFile:
    path: Path
    producer_id: str
    region: str
    records: int


def synthetic_record(rng: random.Random, index: int, region: str) -> dict[str, object]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    event_time = _EPOCH + timedelta(seconds=rng.randrange(0, 365 * 24 * 3600))
    return {
        "customer_id": f"cust-{index:07d}-{rng.getrandbits(32):08x}",
        "name": f"{first} {last}",
        "email": f"{first.lower()}.{last.lower()}{index}@example.org",
        "amount": round(rng.lognormvariate(AMOUNT_LOG_MEAN, AMOUNT_LOG_SIGMA), 2),
        "event_time": event_time.isoformat().replace("+00:00", "Z"),
        "region": region,
    }


def write_partner_files(directory: Path, records: int, *, files_per_group: int = 2,
                        seed: int = 7) -> list[PartnerFile]:
    """Write ``records`` synthetic records as JSONL, split by (producer, region) and file."""
    if not 1 <= records <= MAX_RECORDS:
        raise PipelineError(f"records must be between 1 and {MAX_RECORDS}")
    if files_per_group < 1:
        raise PipelineError("files_per_group must be at least 1")
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, str], list[dict[str, object]]] = {}
    for index in range(records):
        producer, region = rng.choice(PRODUCERS), rng.choice(REGIONS)
        groups.setdefault((producer, region), []).append(synthetic_record(rng, index, region))
    files: list[PartnerFile] = []
    for (producer, region), rows in sorted(groups.items()):
        per_file = math.ceil(len(rows) / files_per_group)
        for part in range(files_per_group):
            chunk = rows[part * per_file:(part + 1) * per_file]
            if not chunk:
                continue
            path = directory / f"{producer}-{region}-{part:02d}.jsonl"
            path.write_text("".join(json.dumps(row) + "\n" for row in chunk), encoding="utf-8")
            files.append(PartnerFile(path, producer, region, len(chunk)))
    return files
