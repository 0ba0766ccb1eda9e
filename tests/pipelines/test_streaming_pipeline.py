"""The streaming pipeline with a real broker: a TestStream across two windows (bundle-based
DirectRunner), a file-drop directory that grows while the pipeline runs (FnApiRunner, through
``sealbeam run streaming``), and the option plumbing of the Pub/Sub source, which is built but
never run here (no Pub/Sub emulator is available offline).

The TestStream run reconciles from what it wrote (rows of the opened outputs, records of the
dead letters), not from its metrics: Beam 2.77's bundle-based DirectRunner loses the counters
of a step's later bundles on a worker thread (``StateSampler.scoped_state`` keeps the first
bundle's ``MetricsContainer``). The file-drop run on FnApiRunner reconciles from metrics."""

from __future__ import annotations

import base64
import json
import re
import shutil
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import apache_beam as beam
import pytest
import yaml
from apache_beam.coders import BytesCoder
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_stream
from apache_beam.transforms.window import GlobalWindow, IntervalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from enclave_workers.batch_processor import default_feature_spec
from pipelines import cli
from pipelines.batch import BatchPipelineOutputs
from pipelines.errors import PipelineError
from pipelines.file_drop import WatchFileDrop
from pipelines.reading import open_output, open_outputs
from pipelines.streaming import build_streaming_pipeline, run_streaming
from pipelines.synthetic import REGIONS
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pipelines.helpers import assert_no_plaintext, plaintext_probes, sealed_partner_files
from transforms.dead_letters import dead_letter_file_name
from transforms.write import STATEMENT_SUFFIX, statement_file_name

RECORDS = 160
WINDOW_SECONDS = 60
WINDOW_LABELS = ("19700101T000000.000Z-19700101T000100.000Z",
                 "19700101T000100.000Z-19700101T000200.000Z")


def _flags(broker: BrokerEnv, output_root: Path, **extra: object) -> list[str]:
    flags = {"output_root": str(output_root), "broker_url": broker.url,
             "tee": "simulated-sev-snp", "dev_tee_dir": str(broker.dev_tee_dir),
             "regions": ",".join(REGIONS), **extra}
    return [f"--{k}={v}" for k, v in flags.items()]


def _spec_without_k_anonymity(directory: Path) -> Path:
    """The default spec minus k-anonymity, so every good record is exactly one output row."""
    document = yaml.safe_load(Path(default_feature_spec().source).read_text("utf-8"))
    assert document.pop("k_anonymity")
    path = directory / "no-k.yaml"
    path.write_text(yaml.safe_dump(document), "utf-8")
    return path


def _corrupt(lines: list[bytes], first: int) -> list[str]:
    """Damage three lines from ``first`` on, one per failing stage; returns the stages."""
    flipped = bytearray(base64.b64decode(lines[first]))
    flipped[-3] ^= 0x40                                        # ciphertext: the tag fails
    lines[first] = base64.b64encode(bytes(flipped))
    lines[first + 1] = b"%%% not base64 %%%"
    lines[first + 2] = base64.b64encode(b"SEALBEAM? no, bytes of the wrong shape")
    return ["open", "framing", "parse"]


class _IndexByWindow(beam.DoFn):
    """Test-only: record each written path with its window, one small file per element."""

    def __init__(self, index_dir: str) -> None:
        self._index_dir = index_dir

    def process(self, path: str, window=beam.DoFn.WindowParam) -> None:
        record = {"path": path, "start": float(window.start), "end": float(window.end)}
        (Path(self._index_dir) / f"{uuid.uuid4()}.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def test_stream_run(broker: BrokerEnv, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("streaming")

    def interleaved(event_time: float, sealed_dir: str) -> tuple[list, list[tuple[str, bytes]]]:
        files, sealed = sealed_partner_files(broker, work, RECORDS, event_time=event_time,
                                             sealed_dir=sealed_dir)
        per_file = [(f.region, path.read_bytes().splitlines()) for f, path in
                    zip(files, sealed, strict=True)]
        return files, [(region, lines[i]) for i in range(max(len(ls) for _, ls in per_file))
                       for region, lines in per_file if i < len(lines)]   # regions interleaved

    # The same records sealed twice, stating an event time in the first and the second window.
    files, first_window = interleaved(10.0, "sealed-0")
    _, second_window = interleaved(WINDOW_SECONDS + 10.0, "sealed-1")
    half = len(first_window) // 2
    tagged = first_window[:half] + second_window[half:]
    lines = [line for _, line in tagged]
    stages = _corrupt(lines, 5) + _corrupt(lines, half + 5)
    bad = {5, 6, 7, half + 5, half + 6, half + 7}
    expected_rows = Counter((i >= half, region) for i, (region, _) in enumerate(tagged)
                            if i not in bad)
    flipped = {lines[5], lines[half + 5]}

    def stamped(start: int, chunk: list[bytes]) -> list[TimestampedValue]:
        return [TimestampedValue(line, start + 1 + i * 50 // len(chunk))
                for i, line in enumerate(chunk)]

    stream = (test_stream.TestStream(coder=BytesCoder())
              .advance_watermark_to(Timestamp(0))
              .add_elements(stamped(0, lines[:half]))
              .advance_processing_time(30)
              .advance_watermark_to(Timestamp(WINDOW_SECONDS))
              .add_elements(stamped(WINDOW_SECONDS, lines[half:]))
              .advance_processing_time(30)
              .advance_watermark_to_infinity())
    index_dir = work / "index"
    index_dir.mkdir()

    def index_outputs(built: BatchPipelineOutputs) -> None:
        built.written_paths | "IndexByWindow" >> beam.ParDo(_IndexByWindow(str(index_dir)))

    options = PipelineOptions(flags=_flags(
        broker, work / "out", message_format="base64", window_seconds=WINDOW_SECONDS,
        min_batch_size=500, feature_spec=_spec_without_k_anonymity(work)))
    started = time.monotonic()
    summary = run_streaming(options, source=stream, extra_steps=index_outputs)
    index = [json.loads(p.read_text()) for p in index_dir.iterdir()]
    return {"work": work, "files": files, "summary": summary, "stages": stages,
            "expected_rows": expected_rows, "index": index, "flipped": flipped,
            "records": len(lines), "seconds": time.monotonic() - started}


def _dead_letters_by_window(out: Path) -> dict[str, list[dict[str, object]]]:
    by_window: dict[str, list[dict[str, object]]] = {}
    for path in (out / "dead-letter").glob("dl-*.jsonl"):
        label = path.name[len("dl-"):len("dl-") + len(WINDOW_LABELS[0])]
        by_window.setdefault(label, []).extend(
            json.loads(line) for line in path.read_bytes().splitlines())
    return by_window


def _rows_by_window_and_region(index: list[dict[str, object]], broker: BrokerEnv
                               ) -> Counter[tuple[bool, str]]:
    rows: Counter[tuple[bool, str]] = Counter()
    for entry in index:
        path = Path(str(entry["path"]))
        region = path.parent.name
        assert entry["end"] - entry["start"] == WINDOW_SECONDS
        table = open_output(path, keyring=broker.keyring, region=region)
        assert set(table.column("region").to_pylist()) <= {region}
        rows[(float(entry["start"]) >= WINDOW_SECONDS, region)] += table.num_rows
    return rows


def test_a_test_stream_reconciles_with_bad_records_as_dead_letters(test_stream_run,
                                                                   broker: BrokerEnv) -> None:
    rows = _rows_by_window_and_region(test_stream_run["index"], broker)
    dead = [d for letters in _dead_letters_by_window(test_stream_run["work"] / "out").values()
            for d in letters]
    assert sum(int(d["records"]) for d in dead) == len(test_stream_run["stages"]) == 6
    assert sum(rows.values()) + len(dead) == test_stream_run["records"] == RECORDS
    assert test_stream_run["summary"].spec_fingerprint
    assert test_stream_run["seconds"] < 30


def test_outputs_are_per_region_per_window_with_every_good_row(test_stream_run,
                                                               broker: BrokerEnv) -> None:
    rows = _rows_by_window_and_region(test_stream_run["index"], broker)
    assert rows == test_stream_run["expected_rows"]
    assert set(rows) == {(second, region) for second in (False, True) for region in REGIONS}
    files = [p for region in REGIONS for p in (test_stream_run["work"] / "out" / region)
             .iterdir() if not p.name.startswith(".")]
    written = sorted(p for p in files if not p.name.endswith(STATEMENT_SUFFIX))
    assert sorted(Path(str(e["path"])) for e in test_stream_run["index"]) == written
    # every output has its signed custody statement beside it, and nothing else stands there
    assert sorted(p for p in files if p.name.endswith(STATEMENT_SUFFIX)) == sorted(
        p.with_name(statement_file_name(p.name)) for p in written)


def test_dead_letters_are_sealed_and_written_per_window(test_stream_run) -> None:
    by_window = _dead_letters_by_window(test_stream_run["work"] / "out")
    assert sorted(by_window) == sorted(WINDOW_LABELS)
    for dead in by_window.values():
        assert sorted(str(d["stage"]) for d in dead) == ["framing", "open", "parse"]
        assert all(d["reason"] and d["records"] == 1 for d in dead)
        opened = [d for d in dead if d["stage"] == "open"]
        assert str(opened[0]["sealed_b64"]).encode() in test_stream_run["flipped"]
        assert [d["sealed_b64"] for d in dead if d["stage"] != "open"] == ["", ""]


def test_no_plaintext_identifier_appears_in_a_streamed_output(test_stream_run) -> None:
    probes = plaintext_probes(test_stream_run["files"])
    assert len(probes) >= 3 * RECORDS - 60
    assert assert_no_plaintext(test_stream_run["work"] / "out", probes) >= 6


def _committed_outputs(out: Path) -> int:
    return sum(1 for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))


def _drop_while_running(sealed: list[Path], drop: Path, out: Path, deadline: float,
                        dropped: list[tuple[str, int]]) -> None:
    """Drop the first file, then each next one only after the pipeline has committed an
    output of the files before it: later files exist only once the run is under way."""
    for path in sealed:
        seen = _committed_outputs(out)
        temp = drop / f".{path.name}.tmp"
        shutil.copyfile(path, temp)
        temp.rename(drop / path.name)
        dropped.append((path.name, seen))
        while _committed_outputs(out) == seen and time.monotonic() < deadline:
            time.sleep(0.05)


def test_a_file_drop_feed_reads_files_that_appear_while_it_runs(
        broker: BrokerEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files, sealed = sealed_partner_files(broker, tmp_path, 60)
    lines = sealed[-1].read_bytes().splitlines()
    lines[0] = b"!!! a line that is not base64 !!!"
    sealed[-1].write_bytes(b"\n".join(lines) + b"\n")
    drop, out = tmp_path / "drop", tmp_path / "out"
    drop.mkdir()
    dropped: list[tuple[str, int]] = []
    dropper = threading.Thread(target=_drop_while_running, daemon=True, args=(
        sealed, drop, out, time.monotonic() + 25, dropped))
    dropper.start()
    code = cli.main(["run", "streaming", *_flags(
        broker, out, input=str(drop / "*.sealed"), poll_interval_seconds=0.2,
        max_files=len(sealed), stop_after_seconds=25, window_seconds=1)])
    dropper.join(timeout=5)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, summary
    assert [name for name, _ in dropped] == [p.name for p in sealed]
    assert [seen > 0 for _, seen in dropped] == [False] + [True] * (len(sealed) - 1)
    assert summary["records_in"] == 60
    assert summary["dead_letters"] == 1 and summary["reconciled"]
    assert summary["records_out"] == summary["rows_out"] + summary["rows_suppressed"] == 59
    rows = sum(open_outputs([out / region], keyring=broker.keyring, region=region).num_rows
               for region in REGIONS if (out / region).is_dir())
    assert rows == summary["rows_out"]
    assert assert_no_plaintext(out, plaintext_probes(files)) >= len(sealed)


def test_a_file_drop_feed_ends_after_stop_after_seconds(broker: BrokerEnv,
                                                        tmp_path: Path) -> None:
    (tmp_path / "drop").mkdir()
    started = time.monotonic()
    summary = run_streaming(PipelineOptions(flags=_flags(
        broker, tmp_path / "out", input=str(tmp_path / "drop" / "*.sealed"),
        poll_interval_seconds=0.25, stop_after_seconds=1.0)))
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 15
    assert summary.records_in == summary.records_out == summary.dead_letters == 0
    assert summary.reconciled


def _labels(options: PipelineOptions) -> set[str]:
    pipeline = beam.Pipeline(runner=FnApiRunner(), options=options)   # built, never run
    build_streaming_pipeline(pipeline, options)
    return {t.unique_name for t in pipeline.to_runner_api().components.transforms.values()}


def test_the_pubsub_source_uses_id_label_only_where_the_runner_honours_it(
        broker: BrokerEnv, tmp_path: Path) -> None:
    flags = [*_flags(broker, tmp_path, source="pubsub",
                     subscription="projects/acme-feed/subscriptions/in"), "--streaming"]
    local = _labels(PipelineOptions(flags=flags))
    assert {"ReadPubSub/Pull", "AcceptMessages/FirstDelivery", "EventTime", "Window"} <= local
    assert "ReadPubSub/ReadFromPubSub" not in local and "WatchFileDrop" not in local
    dataflow = _labels(PipelineOptions(flags=[*flags, "--runner=DataflowRunner"]))
    assert "ReadPubSub/ReadFromPubSub" in dataflow and "ReadPubSub/Pull" not in dataflow
    with pytest.raises(PipelineError, match="--subscription"):
        build_streaming_pipeline(beam.Pipeline(), PipelineOptions(
            flags=_flags(broker, tmp_path, source="pubsub")))


def test_bad_streaming_options_are_user_errors(broker: BrokerEnv, tmp_path: Path) -> None:
    pattern = str(tmp_path / "*.sealed")
    with pytest.raises(PipelineError, match="--window_seconds"):
        build_streaming_pipeline(beam.Pipeline(), PipelineOptions(
            flags=_flags(broker, tmp_path, input=pattern, window_seconds=0)))
    with pytest.raises(PipelineError, match="--input"):
        build_streaming_pipeline(beam.Pipeline(), PipelineOptions(flags=_flags(broker, tmp_path)))
    with pytest.raises(PipelineError, match="--max_files"):
        WatchFileDrop(pattern, poll_interval_s=1, max_files=0)
    with pytest.raises(PipelineError, match="--poll_interval_seconds"):
        WatchFileDrop(pattern, poll_interval_s=0)
    with pytest.raises(PipelineError, match="--stop_after_seconds"):
        WatchFileDrop(pattern, poll_interval_s=1, stop_after_s=-1)
    assert cli.main(["run", "streaming", *_flags(broker, tmp_path, input=pattern,
                                                 window_seconds=-5)]) == cli.USAGE_EXIT


def test_dead_letter_files_name_their_window() -> None:
    window = IntervalWindow(Timestamp(60), Timestamp(120.5))
    name = dead_letter_file_name(window, bytes(16))
    assert name.startswith("dl-19700101T000100.000Z-19700101T000200.500Z-")
    assert name.endswith(".jsonl")
    assert dead_letter_file_name(window, bytes(16)) == name         # named by its contents
    assert dead_letter_file_name(window, bytes(15) + b"\x01") != name
    assert re.fullmatch(r"dl-[0-9a-f-]{36}\.jsonl",
                        dead_letter_file_name(GlobalWindow(), bytes(16)))
