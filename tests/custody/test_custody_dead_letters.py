"""Dead letters and duplicates are part of the story: a run with both still verifies, and
losing a dead-letter file is refused."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from keybroker.identity import BrokerPublicKey, canonical_json
from keybroker.kms.local import LocalKeyring
from pipelines import synthetic
from pipelines.batch import RunSummary, run_batch
from pipelines.custody_run import RUN_STATEMENT_NAME, verify_run
from pipelines.sealing import seal_file
from tests.support.broker import start_broker

RECORDS = 200


def _add_bad_lines(sealed: Path) -> None:
    """A line that is not base64, one that is not an envelope, a tampered envelope, and a
    duplicate of the first envelope."""
    lines = sealed.read_bytes().splitlines()
    tampered = bytearray(base64.b64decode(lines[1]))
    tampered[-5] ^= 0x01
    extra = [b"this is not base64 !!", base64.b64encode(b"not an envelope at all"),
             base64.b64encode(bytes(tampered)), lines[0]]
    sealed.write_bytes(b"\n".join([lines[0], *lines[2:], *extra]) + b"\n")


@pytest.fixture(scope="module")
def run_with_dead_letters(tmp_path_factory: pytest.TempPathFactory
                          ) -> Iterator[tuple[Path, RunSummary, BrokerPublicKey]]:
    root = tmp_path_factory.mktemp("custody-dead-letters")
    files = synthetic.write_partner_files(root / "partner", RECORDS)
    with start_broker(root / "state", tenants=synthetic.PRODUCERS) as broker:
        keyring = LocalKeyring.open(broker.settings.keyring_path)
        (root / "sealed").mkdir()
        sealed = [seal_file(f.path, root / "sealed" / f"{f.path.stem}.sealed", keyring=keyring,
                            region=f.region, producer_id=f.producer_id, profile=1)
                  for f in files]
        _add_bad_lines(Path(sealed[0].output_path))
        summary = run_batch(PipelineOptions(flags=[
            f"--input={root / 'sealed' / '*.sealed'}", f"--output_root={root / 'out'}",
            f"--broker_url={broker.url}", "--tee=simulated-sev-snp",
            f"--dev_tee_dir={broker.settings.dev_chain_dir}", "--regions=eu,us"]))
        key = BrokerPublicKey.load(broker.settings.identity_path)
    yield root / "out", summary, key


def test_a_run_with_dead_letters_and_duplicates_verifies(run_with_dead_letters: tuple[
        Path, RunSummary, BrokerPublicKey]) -> None:
    out, summary, key = run_with_dead_letters
    assert summary.dead_letters >= 3 and summary.duplicates == 1
    verdict = verify_run(out, broker_key=key)
    assert verdict.ok, verdict.reasons
    assert verdict.facts["dead_letter_records"] == summary.dead_letters
    assert verdict.facts["duplicates"] == 1
    run_statement = json.loads((out / RUN_STATEMENT_NAME).read_text())
    named = [s["name"] for s in run_statement["subject"] if s["name"].startswith("dead-letter/")]
    assert named and all(len(s["digest"]["sha256"]) == 64 for s in run_statement["subject"])
    assert run_statement["predicate"]["counts"]["dead_letters"] == summary.dead_letters


def test_a_lost_dead_letter_file_is_refused(run_with_dead_letters: tuple[
        Path, RunSummary, BrokerPublicKey], tmp_path: Path) -> None:
    source, _, key = run_with_dead_letters
    out = tmp_path / "out"
    shutil.copytree(source, out)
    run_statement = json.loads((out / RUN_STATEMENT_NAME).read_text())
    lost = next(s["name"] for s in run_statement["subject"]
                if s["name"].startswith("dead-letter/"))
    (out / lost).unlink()
    run_statement["subject"] = [s for s in run_statement["subject"] if s["name"] != lost]
    (out / RUN_STATEMENT_NAME).write_bytes(canonical_json(run_statement))
    verdict = verify_run(out, broker_key=key)
    assert not verdict.ok
    assert any("input line" in r or "no output statement and no dead letter" in r
               for r in verdict.reasons), verdict.reasons
