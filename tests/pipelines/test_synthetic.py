"""Synthetic partner data: deterministic, both regions and producers, identifiers present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.errors import PipelineError
from pipelines.synthetic import PRODUCERS, REGIONS, amount_mean, write_partner_files


def test_files_cover_every_producer_and_region_and_are_deterministic(tmp_path: Path) -> None:
    first = write_partner_files(tmp_path / "a", 400, files_per_group=2, seed=5)
    second = write_partner_files(tmp_path / "b", 400, files_per_group=2, seed=5)
    assert sum(f.records for f in first) == 400
    assert {(f.producer_id, f.region) for f in first} == {(p, r) for p in PRODUCERS
                                                           for r in REGIONS}
    assert [f.path.read_bytes() for f in first] == [f.path.read_bytes() for f in second]
    rows = [json.loads(line) for f in first for line in f.path.read_text().splitlines()]
    assert len({r["customer_id"] for r in rows}) == 400
    assert all(r["region"] in REGIONS and "@" in r["email"] and r["name"] for r in rows)
    mean = sum(r["amount"] for r in rows) / len(rows)
    assert 0.7 * amount_mean() < mean < 1.3 * amount_mean()


def test_record_count_is_bounded(tmp_path: Path) -> None:
    with pytest.raises(PipelineError):
        write_partner_files(tmp_path, 0)
