"""Denials in the ledger: cut to the cap but never dropped; anonymous ones counted per source."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keybroker.ledger import MAX_DETAILS_BYTES, AuditLedger, LedgerError
from keybroker.ledger_denials import (
    SUMMARY_EVENT,
    DenialAggregator,
    canonical_size,
    fit_details,
)

details_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3000),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=20), details_values, max_size=12),
       st.sampled_from([512, 2048, 4096]))
def test_fitted_details_always_fit_and_say_so(details: dict[str, object], cap: int) -> None:
    fitted = fit_details(details, cap)
    assert canonical_size(fitted) <= cap
    if canonical_size(details) <= cap:
        assert fitted == details
    else:
        assert fitted["truncated"] is True and fitted["original_bytes"] > cap


def test_a_denial_over_64_kib_is_recorded_cut_and_marked(tmp_path: Path) -> None:
    reason = "policy says no because " + "\u00e9" * 40_000  # 6 bytes each once escaped
    details = {"status": 403, "error": "denied", "reason": reason, "kek": "k" * 900}
    with AuditLedger(tmp_path / "ledger.sqlite") as ledger:
        with pytest.raises(LedgerError, match="over the limit"):
            ledger.append("release", "denied", details)  # what used to drop the row
        entry = ledger.append("release", "denied", fit_details(details, MAX_DETAILS_BYTES))
        assert ledger.verify().ok
    assert entry.details["truncated"] is True
    assert entry.details["original_bytes"] > MAX_DETAILS_BYTES
    assert entry.details["reason"].startswith("policy says no because \u00e9")
    assert entry.details["reason"].endswith("\u2026") and entry.details["kek"] == "k" * 900


def test_too_many_fields_keep_the_verdict_and_name_the_rest() -> None:
    details = {f"field{i:04d}": "x" * 20 for i in range(400)}
    details.update({"status": 401, "error": "bad_nonce", "reason": "nonce expired"})
    fitted = fit_details(details, 1024)
    assert canonical_size(fitted) <= 1024
    assert (fitted["status"], fitted["error"], fitted["reason"]) == (401, "bad_nonce",
                                                                     "nonce expired")
    assert fitted["dropped_fields"][:2] == ["field0000", "field0001"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rows:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, Mapping[str, object]]] = []
        self.down = False

    def __call__(self, event: str, decision: str, details: Mapping[str, object]) -> None:
        if self.down:
            raise LedgerError("ledger down")
        self.rows.append((event, decision, dict(details)))


def test_aggregation_per_source_and_interval_and_bounded_sources() -> None:
    clock, rows = Clock(), Rows()
    aggregator = DenialAggregator(rows, interval_seconds=60, in_full=2, max_sources=2,
                                  details_cap=4096, clock=clock)
    for source in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"):
        for _ in range(5):
            aggregator.record("attest", source, {"error": "bad_nonce", "reason": "forged"})
    assert len(rows.rows) == 4  # two in full for each of the two tracked sources
    clock.now += 60
    aggregator.flush_due()
    summaries = {row[2]["source"]: row[2] for row in rows.rows if row[0] == SUMMARY_EVENT}
    assert summaries["10.0.0.1"]["count"] == 3 and summaries["10.0.0.2"]["count"] == 3
    assert summaries["other"]["count"] == 10 and summaries["other"]["in_full"] == 0
    assert summaries["10.0.0.1"]["by_error"] == {"bad_nonce": 3}
    aggregator.record("attest", "10.0.0.1", {"error": "bad_nonce"})
    assert rows.rows[-1][0] == "attest"  # a new interval writes in full again


def test_counts_survive_a_ledger_outage_and_close_flushes() -> None:
    clock, rows = Clock(), Rows()
    aggregator = DenialAggregator(rows, interval_seconds=60, in_full=0, max_sources=10,
                                  details_cap=4096, clock=clock)
    for _ in range(3):
        aggregator.record("release", "10.0.0.9", {"error": "bad_session"})
    rows.down = True
    aggregator.flush()  # logged, counts kept
    rows.down = False
    aggregator.record("release", "10.0.0.9", {"error": "bad_session"})
    aggregator.close()
    (summary,) = [row[2] for row in rows.rows if row[0] == SUMMARY_EVENT]
    assert summary["count"] == 4
