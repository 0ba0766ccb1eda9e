"""Streaming semantics with ``TestStream`` (bundle-based DirectRunner): event-time windows from
the header, batches held per window across bundles, allowed lateness, late records set aside,
and duplicates dropped across windows.

One stream, arrival times (``TestStream`` timestamps) against the event times the headers
state, window 60 s, allowed lateness 30 s:

- ``first``: event time 10 s, arriving 5 to 50 s in four small bundles (window [0, 60));
- ``second``: event time 70 s, arriving 65 to 110 s (window [60, 120));
- ``straggler``: event time 20 s arriving at 80 s: behind the watermark but within the
  lateness, so it still joins window [0, 60) (a late pane of its own files);
- ``too_late``: event time 30 s arriving at 100 s (60 + 30 <= 100): to ``late/``, sealed;
- copies of three ``first`` envelopes arrive again at 55 s and at 75 s (in the next window's
  time): each row is written once.

Counts come from the written outputs, not the metrics: this runner loses the counters of a
step's later bundles (docs/ARCHITECTURE.md, Streaming).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.coders import BytesCoder
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_stream
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from envelope import read_header
from keybroker.identity import IDENTITY_PUBLIC_KEY_FILE, BrokerPublicKey
from pipelines.batch import BatchPipelineOutputs
from pipelines.custody_run import RUN_STATEMENT_NAME, verify_run
from pipelines.reading import open_output
from pipelines.streaming import run_streaming
from pipelines.synthetic import REGIONS
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pipelines.helpers import sealed_partner_files, spec_without_k_anonymity
from transforms.event_time import (
    EventTimeError,
    format_event_time,
    parse_event_time,
    window_end,
)

WINDOW_SECONDS = 60


def _lines(paths: list[Path]) -> list[bytes]:
    return [line for path in paths for line in path.read_bytes().splitlines() if line]


def _key(line: bytes) -> tuple[str, str]:
    header, _ = read_header(base64.b64decode(line))
    return header.region, header.producer_id


def _at(arrival: float, lines: list[bytes]) -> list[TimestampedValue]:
    return [TimestampedValue(line, arrival) for line in lines]


class _IndexByWindow(beam.DoFn):
    def __init__(self, index_dir: str) -> None:
        self._index_dir = index_dir

    def process(self, path: str, window=beam.DoFn.WindowParam) -> None:
        (Path(self._index_dir) / f"{uuid.uuid4()}.json").write_text(json.dumps(
            {"path": path, "start": float(window.start), "end": float(window.end)}))


@pytest.fixture(scope="module")
def semantics_run(broker: BrokerEnv, tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("semantics")
    first = _lines(sealed_partner_files(broker, work, 48, event_time=10.0, seed=21)[1])
    second = _lines(sealed_partner_files(broker, work, 24, event_time=70.0, seed=22,
                                         sealed_dir="sealed-2")[1])
    straggler = _lines(sealed_partner_files(broker, work, 4, event_time=20.0, seed=23,
                                            sealed_dir="sealed-3")[1])
    too_late = _lines(sealed_partner_files(broker, work, 5, event_time=30.0, seed=24,
                                           sealed_dir="sealed-4")[1])
    copies = first[:3]
    quarter = len(first) // 4
    stream = test_stream.TestStream(coder=BytesCoder()).advance_watermark_to(Timestamp(0))
    for i in range(4):                                     # four small bundles, one window
        stream = (stream.add_elements(_at(5 + 10 * i, first[i * quarter:(i + 1) * quarter]))
                  .advance_watermark_to(Timestamp(6 + 10 * i)))
    stream = (stream
              .add_elements(_at(55, copies))
              .advance_watermark_to(Timestamp(65))
              .add_elements(_at(65, second[: len(second) // 2]))
              .add_elements(_at(75, copies))
              .advance_watermark_to(Timestamp(80))
              .add_elements(_at(80, straggler))
              .advance_watermark_to(Timestamp(100))
              .add_elements(_at(100, too_late))
              .add_elements(_at(110, second[len(second) // 2:]))
              .advance_watermark_to_infinity())
    index_dir = work / "index"
    index_dir.mkdir()

    def index_outputs(built: BatchPipelineOutputs) -> None:
        built.written_paths | "IndexByWindow" >> beam.ParDo(_IndexByWindow(str(index_dir)))

    out = work / "out"
    flags = {"output_root": out, "broker_url": broker.url, "tee": "simulated-sev-snp",
             "dev_tee_dir": broker.dev_tee_dir, "regions": ",".join(REGIONS),
             "message_format": "base64", "window_seconds": WINDOW_SECONDS,
             "allowed_lateness_seconds": 30, "max_batch_duration_seconds": 3600,
             "min_batch_size": 1, "feature_spec": spec_without_k_anonymity(work)}
    run_streaming(PipelineOptions(flags=[f"--{k}={v}" for k, v in flags.items()]),
                  source=stream, extra_steps=index_outputs)
    index = [json.loads(p.read_text()) for p in index_dir.iterdir()]
    return {"out": out, "index": index, "first": first, "second": second,
            "straggler": straggler, "too_late": too_late, "copies": copies}


def _rows_by_window(run: dict[str, Any], broker: BrokerEnv) -> Counter[float]:
    rows: Counter[float] = Counter()
    for entry in run["index"]:
        path = Path(entry["path"])
        rows[entry["start"]] += open_output(path, keyring=broker.keyring,
                                            region=path.parent.name).num_rows
    return rows


def test_windows_follow_the_header_event_time_with_every_row_once(semantics_run,
                                                                   broker: BrokerEnv) -> None:
    rows = _rows_by_window(semantics_run, broker)
    assert rows == {0.0: len(semantics_run["first"]) + len(semantics_run["straggler"]),
                    60.0: len(semantics_run["second"])}


def test_a_window_batch_spans_bundles_until_the_window_closes(semantics_run) -> None:
    """Four bundles of ``first`` give one output per (region, producer), not one per bundle;
    the straggler's late pane adds its own files, never rewriting the closed window's."""
    by_window = Counter(entry["start"] for entry in semantics_run["index"])
    first_keys = {_key(line) for line in semantics_run["first"]}
    straggler_keys = {_key(line) for line in semantics_run["straggler"]}
    assert by_window[60.0] == len({_key(line) for line in semantics_run["second"]})
    assert by_window[0.0] == len(first_keys) + len(straggler_keys)
    paths = [entry["path"] for entry in semantics_run["index"]]
    assert len(paths) == len(set(paths))


def test_records_behind_the_allowed_lateness_go_to_the_late_output(semantics_run) -> None:
    late = [json.loads(line) for path in (semantics_run["out"] / "late").glob("late-*.jsonl")
            for line in path.read_bytes().splitlines()]
    expected = {base64.b64decode(line) for line in semantics_run["too_late"]}
    assert {base64.b64decode(entry["sealed_b64"]) for entry in late} == expected
    assert len(late) == len(expected)
    assert {entry["event_time"] for entry in late} == {"1970-01-01T00:00:30.000Z"}
    assert {entry["arrival"] for entry in late} == {"1970-01-01T00:01:40.000Z"}
    assert not (semantics_run["out"] / "dead-letter").exists()


def test_event_time_round_trips_and_rejects_other_forms() -> None:
    assert format_event_time(1764595800.25) == "2025-12-01T13:30:00.250Z"
    assert parse_event_time("2025-12-01T13:30:00.250Z") == Timestamp(1764595800.25)
    for bad in ("2025-12-01T13:30:00Z", "2025-12-01 13:30:00.250Z", "2025-02-30T00:00:00.000Z",
                "2025-12-01T13:30:00.250+01:00", ""):
        with pytest.raises(EventTimeError):
            parse_event_time(bad)
    assert window_end(Timestamp(59.999), 60) == Timestamp(60)
    assert window_end(Timestamp(60), 60) == Timestamp(120)


def test_a_test_stream_run_statement_names_no_inputs_and_asks_for_them(
        semantics_run, broker: BrokerEnv, tmp_path: Path) -> None:
    """The run statement of a TestStream run says ``"source": "test"`` and names no input
    files: ``verify_run`` refuses it until the files it was fed are given. With them,
    nothing is lost (outputs, dead letters, late files and duplicates cover every input);
    only the statement's counts may disagree, since they are this runner's metrics, which
    undercount (the module docstring)."""
    out = semantics_run["out"]
    predicate = json.loads((out / RUN_STATEMENT_NAME).read_text())["predicate"]
    assert predicate["source"] == "test" and predicate["inputs"] == []
    key = BrokerPublicKey.load(broker.state_dir / IDENTITY_PUBLIC_KEY_FILE)
    bare = verify_run(out, broker_key=key)
    assert not bare.ok
    assert any("test stream" in r and "--input" in r for r in bare.reasons)
    fed = tmp_path / "fed.sealed"                 # every line as delivered, copies twice
    fed.write_bytes(b"\n".join([*semantics_run["first"], *semantics_run["second"],
                                *semantics_run["straggler"], *semantics_run["too_late"],
                                *semantics_run["copies"], *semantics_run["copies"]]) + b"\n")
    verdict = verify_run(out, broker_key=key, inputs=[fed])
    assert all(r.startswith("the run statement says ") for r in verdict.reasons), \
        verdict.reasons
    assert verdict.outputs and all(o.ok for o in verdict.outputs)
    assert verdict.facts["late_records"] == len(semantics_run["too_late"])
    assert verdict.facts["duplicates"] == 2 * len(semantics_run["copies"])
    short = tmp_path / "short.sealed"             # fewer lines than were fed: refused
    short.write_bytes(b"\n".join(semantics_run["first"][1:]) + b"\n")
    refused = verify_run(out, broker_key=key, inputs=[short])
    assert any("are not among the inputs" in r for r in refused.reasons)
