"""Batch run statements with and without the fields streaming runs added (``late``,
``source``): a statement written before them still verifies; a batch run's ``late`` is 0."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from keybroker.identity import canonical_json
from pipelines.custody_run import RUN_STATEMENT_NAME, verify_run

from .conftest import DemoRun


def _copy_with(demo_run: DemoRun, tmp_path: Path, edit) -> Path:
    out = tmp_path / "out"
    shutil.copytree(demo_run.out, out)
    statement = json.loads((out / RUN_STATEMENT_NAME).read_text())
    edit(statement["predicate"])
    (out / RUN_STATEMENT_NAME).write_bytes(canonical_json(statement))
    return out


def test_a_batch_statement_states_source_batch_and_no_late_records(demo_run: DemoRun) -> None:
    predicate = json.loads((demo_run.out / RUN_STATEMENT_NAME).read_text())["predicate"]
    assert predicate["source"] == "batch"
    assert predicate["counts"]["late"] == 0
    assert "input_files" not in predicate and "subscription" not in predicate
    verdict = verify_run(demo_run.out, broker_key=demo_run.broker_key)
    assert verdict.ok, verdict.reasons
    assert verdict.facts["source"] == "batch" and verdict.facts["late_records"] == 0


def test_an_old_batch_statement_without_late_or_source_verifies(demo_run: DemoRun,
                                                               tmp_path: Path) -> None:
    def strip(predicate: dict) -> None:
        del predicate["source"]
        del predicate["counts"]["late"]

    out = _copy_with(demo_run, tmp_path, strip)
    verdict = verify_run(out, broker_key=demo_run.broker_key)
    assert verdict.ok, verdict.reasons
    assert verdict.facts["source"] == "batch"


def test_a_batch_statement_claiming_late_records_is_refused(demo_run: DemoRun,
                                                           tmp_path: Path) -> None:
    def late(predicate: dict) -> None:
        predicate["counts"]["late"] = 1

    verdict = verify_run(_copy_with(demo_run, tmp_path, late), broker_key=demo_run.broker_key)
    assert not verdict.ok
    assert "the run statement says late=1, the files give 0" in verdict.reasons


def test_an_unknown_source_is_refused(demo_run: DemoRun, tmp_path: Path) -> None:
    def unknown(predicate: dict) -> None:
        predicate["source"] = "carrier-pigeon"

    verdict = verify_run(_copy_with(demo_run, tmp_path, unknown),
                         broker_key=demo_run.broker_key)
    assert not verdict.ok
    assert any("'carrier-pigeon' is not one of" in r for r in verdict.reasons)
