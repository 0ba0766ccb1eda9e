"""Dead letters as JSON lines: the sealed bytes in base64 and the reason, nothing else."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from enclave_workers.batch_processor import DeadLetter
from transforms import WriteDeadLetters, dead_letter_to_json


def test_json_line_shape() -> None:
    line = dead_letter_to_json(DeadLetter("ab12", "envelope failed authentication", "open",
                                          b"\x00sealed\xff", records=1))
    assert line.endswith(b"\n")
    assert json.loads(line) == {"record_id": "ab12", "reason": "envelope failed authentication",
                                "stage": "open", "records": 1, "rows": 0,
                                "sealed_b64": base64.b64encode(b"\x00sealed\xff").decode()}


def test_writes_every_dead_letter_under_dead_letter_dir(tmp_path: Path) -> None:
    letters = [DeadLetter(f"id-{i}", "reason", "parse", bytes([i]) * 3) for i in range(25)]
    with beam.Pipeline(runner=FnApiRunner()) as p:
        p | beam.Create(letters) | WriteDeadLetters(str(tmp_path))
    files = list((tmp_path / "dead-letter").glob("dl-*.jsonl"))
    assert files
    assert not list((tmp_path / "dead-letter").glob(".*"))     # no temporary files left
    rows = [json.loads(line) for f in files for line in f.read_bytes().splitlines()]
    assert sorted(r["record_id"] for r in rows) == sorted(d.record_id for d in letters)
    assert {base64.b64decode(r["sealed_b64"]) for r in rows} == {d.sealed for d in letters}
