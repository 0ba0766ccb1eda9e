"""Exactly-once outputs on FnApiRunner: failures injected after the confidential step and in
the write's rename, reruns into the same output root, duplicated input envelopes. Every
finished run reconciles, names the same files as a clean run, leaves no temporary file and
holds each row (and dead letter) once."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

from pipelines.batch import RunSummary, run_batch
from pipelines.synthetic import REGIONS
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pipelines.helpers import sealed_partner_files
from tests.pipelines.run_support import (
    batch_options,
    dead_letter_ids,
    output_names,
    output_rows,
    run_with_hook,
)

RECORDS = 120


class Reference:
    def __init__(self, pattern: str, root: Path, summary: RunSummary,
                 broker: BrokerEnv) -> None:
        self.pattern = pattern
        self.summary = summary
        self.names = output_names(root)
        self.rows = {r: output_rows(broker, root, r) for r in REGIONS}
        self.dead = dead_letter_ids(root)


@pytest.fixture(scope="module")
def reference(broker: BrokerEnv, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """Inputs with one line that is not base64, and a clean run over them."""
    work = tmp_path_factory.mktemp("exactly-once")
    _, sealed = sealed_partner_files(broker, work, RECORDS)
    with sealed[0].open("ab") as damaged:
        damaged.write(b"%% not base64 %%\n")
    pattern = str(work / "sealed" / "*.sealed")
    summary = run_batch(batch_options(broker, pattern, work / "clean"))
    assert summary.reconciled and summary.dead_letters == 1
    assert not any(name.rsplit("/", 1)[-1].startswith(".") for name in output_names(
        work / "clean"))
    return Reference(pattern, work / "clean", summary, broker)


def _assert_like_reference(broker: BrokerEnv, root: Path, summary: RunSummary,
                           reference: Reference) -> None:
    assert summary.reconciled
    assert (summary.records_in, summary.records_out, summary.dead_letters) == (
        reference.summary.records_in, reference.summary.records_out,
        reference.summary.dead_letters)
    assert output_names(root) == reference.names          # no extra file, no temporary file
    for region in REGIONS:
        assert output_rows(broker, root, region) == reference.rows[region]   # each row once
    assert dead_letter_ids(root) == reference.dead


def test_a_failure_after_the_confidential_step_then_a_rerun_writes_each_row_once(
        broker: BrokerEnv, reference: Reference, tmp_path: Path) -> None:
    """FnApiRunner does not retry a bundle: the job fails at the first injected failure and
    is run again (as an operator or a scheduler would) until every bundle's retry passed."""
    options = batch_options(broker, reference.pattern, tmp_path / "out")
    failures = 0
    for _ in range(len(reference.names) + 1):
        try:
            summary = run_with_hook(options, "FailFirstAttempt", str(tmp_path))
            break
        except Exception as exc:                       # the runner wraps the DoFn's error
            assert "injected failure" in str(exc)
            failures += 1
            assert not [n for n in output_names(tmp_path / "out") if n.endswith(".tmp")]
    else:
        pytest.fail("the job never finished")
    assert failures >= 1
    _assert_like_reference(broker, tmp_path / "out", summary, reference)


def test_a_failed_rename_leaves_no_temporary_file_and_a_rerun_completes(
        broker: BrokerEnv, reference: Reference, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    rename = FileSystems.rename
    failed: list[str] = []

    def flaky_rename(sources: list[str], destinations: list[str]) -> None:
        target = destinations[0]
        if target.endswith(".sbatch") and (not failed or failed[0] == target):
            failed.append(target)                 # both attempts at the first output fail
            raise BeamIOError("injected rename failure", {(sources[0], target): OSError()})
        rename(sources, destinations)

    root = tmp_path / "out"
    monkeypatch.setattr(FileSystems, "rename", staticmethod(flaky_rename))
    with pytest.raises(Exception, match="injected rename failure"):
        run_batch(batch_options(broker, reference.pattern, root))
    monkeypatch.setattr(FileSystems, "rename", staticmethod(rename))
    assert len(failed) == 2
    assert not [n for n in output_names(root) if n.endswith(".tmp")]
    # What a killed worker leaves behind: the finished run removes it.
    (root / "eu").mkdir(parents=True, exist_ok=True)
    (root / "eu" / ".part-killed-worker.sbatch.tmp").write_bytes(b"half a file")
    summary = run_batch(batch_options(broker, reference.pattern, root))
    _assert_like_reference(broker, root, summary, reference)


def test_the_same_job_twice_into_one_root_leaves_the_same_files_and_rows(
        broker: BrokerEnv, reference: Reference, tmp_path: Path) -> None:
    root = tmp_path / "out"
    first = run_batch(batch_options(broker, reference.pattern, root))
    _assert_like_reference(broker, root, first, reference)
    second = run_batch(batch_options(broker, reference.pattern, root))
    _assert_like_reference(broker, root, second, reference)


def test_duplicated_input_envelopes_are_counted_and_written_once(
        broker: BrokerEnv, reference: Reference, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    sources = sorted(Path(reference.pattern).parent.glob("*.sealed"))
    for source in sources:
        shutil.copy(source, inputs / source.name)
    lines = sources[-1].read_bytes().splitlines()
    copies = [lines[0], lines[1], lines[1]]        # a redelivered line, and one twice
    assert all(base64.b64decode(line, validate=True) for line in copies)
    (inputs / "zz-redelivered.sealed").write_bytes(b"\n".join(copies) + b"\n")
    summary = run_batch(batch_options(broker, str(inputs / "*.sealed"), tmp_path / "out"))
    assert summary.duplicates == 3
    assert summary.records_in == reference.summary.records_in + 3
    assert summary.records_out == reference.summary.records_out
    assert summary.reconciled
    # Dead letters name their input file's path, which differs here; outputs do not.
    assert {n for n in output_names(tmp_path / "out") if not n.startswith("dead-letter")} == \
        {n for n in reference.names if not n.startswith("dead-letter")}
    assert len(dead_letter_ids(tmp_path / "out")) == len(reference.dead)
    for region in REGIONS:
        assert output_rows(broker, tmp_path / "out", region) == reference.rows[region]
