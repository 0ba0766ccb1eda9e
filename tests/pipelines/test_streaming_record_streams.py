"""Record streams (record profile 2) through the streaming pipeline: each record windowed by
its frame's event time, a stream spanning several windows split into pieces without a key,
late records of a stream set aside one by one, a redelivered stream a duplicate of all of its
records, a corrupted record its own dead letter; the same rows as the same records sealed as
v1 envelopes.

TestStream runs (bundle-based DirectRunner) are judged from what they wrote (rows per window,
late lines, dead letters), not from their metrics, which that runner undercounts
(docs/ARCHITECTURE.md, Streaming); the two-worker file-drop run on FnApiRunner reconciles
from its metrics."""

from __future__ import annotations

import base64
import json
import time
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

from enclave_workers.records import INPUT_SCHEMA_FINGERPRINT
from envelope import (
    read_record_stream,
    read_stream_record,
    seal_record,
    seal_record_stream,
)
from pipelines.batch import BatchPipelineOutputs
from pipelines.reading import open_output
from pipelines.streaming import run_streaming
from pipelines.synthetic import REGIONS, write_partner_files
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pipelines.helpers import spec_without_k_anonymity
from tests.pipelines.run_support import dead_letter_ids, output_rows
from transforms.event_time import EVENT_TIME_CONTEXT_KEY, format_event_time

WINDOW_S = 60
LATENESS_S = 30
RECORDS = 90
PER_STREAM = 12


def _event_time(k: int) -> float:
    """Record ``k``'s event time: 10 s to 170 s, so windows [0, 60), [60, 120), [120, 180)."""
    return 10.0 + (k * 7) % 160


def _sealed(broker: BrokerEnv, work: Path, *, header_time: float = 50.0,
            untimed_every: int = 5) -> dict[str, Any]:
    """The same records as v1 envelopes and as record streams (a DEK per stream), each
    record with its event time; in the streams, every ``untimed_every``-th record's frame
    says none (0), so it falls back to the header's ``header_time``."""
    files = write_partner_files(work / "partner", RECORDS, files_per_group=1, seed=41)
    v1: list[bytes] = []
    streams: list[bytes] = []
    times: list[float] = []
    for partner in files:
        records = [line for line in partner.path.read_bytes().splitlines() if line.strip()]
        region, producer = partner.region, partner.producer_id
        for start in range(0, len(records), PER_STREAM):
            chunk = records[start : start + PER_STREAM]
            own = [_event_time(len(times) + i) for i in range(len(chunk))]
            stated = [header_time if (len(times) + i) % untimed_every == 0 else t
                      for i, t in enumerate(own)]
            times.extend(stated)
            data_key, wrapped = broker.wrap_new_key(region, producer)
            streams.append(seal_record_stream(
                chunk, data_key=data_key, wrapped_key=wrapped, region=region,
                producer_id=producer, schema_fingerprint=INPUT_SCHEMA_FINGERPRINT,
                context={"sealbeam.kind": "partner-records",
                         EVENT_TIME_CONTEXT_KEY: format_event_time(header_time)},
                event_times_ms=[None if s != t else round(t * 1000)
                                for s, t in zip(stated, own, strict=True)]))
            for record, moment in zip(chunk, stated, strict=True):
                v1.append(seal_record(record, data_key=data_key, wrapped_key=wrapped,
                                      region=region, producer_id=producer,
                                      schema_fingerprint=INPUT_SCHEMA_FINGERPRINT,
                                      context={"sealbeam.kind": "partner-records",
                                               EVENT_TIME_CONTEXT_KEY:
                                                   format_event_time(moment)}))
    return {"v1": v1, "streams": streams, "times": times}


class _IndexByWindow(beam.DoFn):
    def __init__(self, index_dir: str) -> None:
        self._index_dir = index_dir

    def process(self, path: str, window=beam.DoFn.WindowParam) -> None:
        (Path(self._index_dir) / f"{uuid.uuid4()}.json").write_text(json.dumps(
            {"path": path, "start": float(window.start)}))


def _run(broker: BrokerEnv, work: Path, name: str,
         arrivals: list[tuple[float, list[bytes]]]) -> dict[str, Any]:
    """Run a TestStream of ``(arrival, envelopes)``; rows per window from the outputs."""
    stream = test_stream.TestStream(coder=BytesCoder()).advance_watermark_to(Timestamp(0))
    for arrival, envelopes in arrivals:
        stream = stream.add_elements([TimestampedValue(base64.b64encode(e), arrival)
                                      for e in envelopes])
    stream = stream.advance_watermark_to_infinity()
    index_dir = work / f"index-{name}"
    index_dir.mkdir()

    def index_outputs(built: BatchPipelineOutputs) -> None:
        built.written_paths | "IndexByWindow" >> beam.ParDo(_IndexByWindow(str(index_dir)))

    out = work / name
    flags = {"output_root": out, "broker_url": broker.url, "tee": "simulated-sev-snp",
             "dev_tee_dir": broker.dev_tee_dir, "regions": ",".join(REGIONS),
             "message_format": "base64", "window_seconds": WINDOW_S,
             "allowed_lateness_seconds": LATENESS_S, "max_batch_duration_seconds": 3600,
             "feature_spec": spec_without_k_anonymity(work)}
    run_streaming(PipelineOptions(flags=[f"--{k}={v}" for k, v in flags.items()]),
                  source=stream, extra_steps=index_outputs)
    rows: Counter[float] = Counter()
    for entry in (json.loads(p.read_text()) for p in index_dir.iterdir()):
        path = Path(entry["path"])
        rows[entry["start"]] += open_output(path, keyring=broker.keyring,
                                            region=path.parent.name).num_rows
    return {"out": out, "rows": rows}


def _late_lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in out.rglob("late/late-*.jsonl")
            for line in path.read_bytes().splitlines()]


def _dead_letters(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in out.rglob("dead-letter/dl-*.jsonl")
            for line in path.read_bytes().splitlines()]


def _window_counts(times: list[float]) -> Counter[float]:
    return Counter(float(int(t // WINDOW_S) * WINDOW_S) for t in times)


@pytest.fixture(scope="module")
def spanning(broker: BrokerEnv, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same records as v1 and as streams spanning three windows, all on time; one
    stream delivered twice."""
    work = tmp_path_factory.mktemp("stream-windows")
    sealed = _sealed(broker, work)
    streams = sealed["streams"]
    v1_run = _run(broker, work, "v1", [(1.0, sealed["v1"])])
    stream_run = _run(broker, work, "streams",
                      [(1.0, streams[: len(streams) // 2]), (2.0, streams[len(streams) // 2:]),
                       (3.0, [streams[0]])])
    return {**sealed, "work": work, "v1_run": v1_run, "stream_run": stream_run}


def test_streams_spanning_windows_count_each_record_in_its_window(spanning) -> None:
    expected = _window_counts(spanning["times"])
    assert len(expected) == 3 and sum(expected.values()) == RECORDS
    assert any(len({int(t // WINDOW_S) for t in _stream_times(s)}) > 1
               for s in spanning["streams"])
    assert spanning["stream_run"]["rows"] == expected
    assert spanning["v1_run"]["rows"] == expected


def _stream_times(stream: bytes) -> list[float]:
    layout = read_record_stream(stream)
    stated = 50.0
    return [stated if t is None else t / 1000 for t in layout.event_times_ms]


def test_streamed_rows_equal_the_same_records_sealed_as_v1(spanning, broker) -> None:
    for region in REGIONS:
        assert output_rows(broker, spanning["stream_run"]["out"], region) == \
            output_rows(broker, spanning["v1_run"]["out"], region)


def test_a_redelivered_stream_is_a_duplicate_of_all_of_its_records(spanning) -> None:
    """Its records are written once (the row counts above); nothing of it is a dead letter
    or late."""
    out = spanning["stream_run"]["out"]
    assert sum(spanning["stream_run"]["rows"].values()) == RECORDS
    assert not _dead_letters(out) and not _late_lines(out)


def test_late_records_of_a_stream_go_to_late_one_by_one(broker: BrokerEnv,
                                                        tmp_path: Path) -> None:
    """Arriving at 100 s, a stream's records of window [0, 60) are late (60 + 30 <= 100),
    its others on time: each late record is a sealed one-record excerpt in late/."""
    sealed = _sealed(broker, tmp_path, untimed_every=10**6)
    streams = sealed["streams"][:3]
    times = [t for s in streams for t in _stream_times(s)]
    run = _run(broker, tmp_path, "late", [(100.0, streams)])
    late = _late_lines(run["out"])
    expected_late = sum(1 for t in times if t < WINDOW_S)
    assert 0 < expected_late < len(times)
    assert len(late) == expected_late
    ids = {read_record_stream(s).header.envelope_id.hex(): s for s in streams}
    for line in late:
        envelope_id, index = line["record_id"].split("#")
        excerpt = read_stream_record(base64.b64decode(line["sealed_b64"]))
        assert excerpt.index == int(index)
        assert excerpt.record_id == read_record_stream(ids[envelope_id]).record_ids[int(index)]
        assert parse_seconds(line["event_time"]) < WINDOW_S
        assert excerpt.header == read_record_stream(ids[envelope_id]).header
    assert run["rows"] == _window_counts([t for t in times if t >= WINDOW_S])
    assert not _dead_letters(run["out"])
    # Given back (the sealed bytes of each late line, arriving in time), they are written.
    replayed = _run(broker, tmp_path, "replayed",
                    [(1.0, [base64.b64decode(line["sealed_b64"]) for line in late])])
    assert replayed["rows"] == _window_counts([t for t in times if t < WINDOW_S])
    assert not _dead_letters(replayed["out"]) and not _late_lines(replayed["out"])


def parse_seconds(text: str) -> float:
    from transforms.event_time import parse_event_time
    return float(parse_event_time(text))


def test_a_corrupted_record_inside_a_stream_is_its_own_dead_letter(
        broker: BrokerEnv, tmp_path: Path) -> None:
    sealed = _sealed(broker, tmp_path, untimed_every=10**6)
    streams = sealed["streams"][:4]
    victim = next(s for s in streams if len({int(t // WINDOW_S) for t in _stream_times(s)}) > 1)
    layout = read_record_stream(victim)
    damaged = bytearray(victim)
    damaged[layout.frame_offsets[3] + 30] ^= 0x01
    streams[streams.index(victim)] = bytes(damaged)
    total = sum(read_record_stream(s).record_count for s in streams)
    run = _run(broker, tmp_path, "corrupt", [(1.0, streams)])
    [letter] = _dead_letters(run["out"])
    assert letter["record_id"] == f"{layout.header.envelope_id.hex()}#3"
    assert letter["stage"] == "open" and letter["records"] == 1
    excerpt = base64.b64decode(letter["sealed_b64"])
    assert read_stream_record(excerpt).index == 3
    assert sum(run["rows"].values()) == total - 1
    assert dead_letter_ids(run["out"]) == [letter["record_id"]]


def test_two_workers_reconcile_a_file_drop_of_streams_spanning_windows(
        broker: BrokerEnv, tmp_path: Path) -> None:
    """FnApiRunner, two workers, a file-drop feed: records of streams spanning 1-second
    windows around now, every third record of the first file's streams an hour old (late);
    a duplicated stream line; metrics reconcile in records."""
    now = time.time()
    files = write_partner_files(tmp_path / "partner", 60, files_per_group=1, seed=43)
    drop = tmp_path / "drop"
    drop.mkdir()
    total = duplicated = late = 0
    for n, partner in enumerate(files):
        records = [line for line in partner.path.read_bytes().splitlines() if line.strip()]
        lines = []
        for start in range(0, len(records), 10):
            chunk = records[start : start + 10]
            data_key, wrapped = broker.wrap_new_key(partner.region, partner.producer_id)
            lines.append(base64.b64encode(seal_record_stream(
                chunk, data_key=data_key, wrapped_key=wrapped, region=partner.region,
                producer_id=partner.producer_id, schema_fingerprint=INPUT_SCHEMA_FINGERPRINT,
                context={EVENT_TIME_CONTEXT_KEY: format_event_time(now)},
                event_times_ms=[round((now - (3600 if n == 0 and i % 3 == 0 else 0.4 * i))
                                      * 1000) for i in range(len(chunk))])))
            total += len(chunk)
            late += sum(1 for i in range(len(chunk)) if n == 0 and i % 3 == 0)
        if n == 0:
            lines.append(lines[0])
            duplicated = len(records[:10])
        (drop / f"{partner.path.stem}.sealed").write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    flags = {"input": str(drop / "*.sealed"), "output_root": str(out),
             "broker_url": broker.url, "tee": "simulated-sev-snp",
             "dev_tee_dir": str(broker.dev_tee_dir), "regions": ",".join(REGIONS),
             "window_seconds": 1, "poll_interval_seconds": 0.2,
             "max_files": len(files), "stop_after_seconds": 30,
             "feature_spec": str(spec_without_k_anonymity(tmp_path)),
             "direct_num_workers": 2, "direct_running_mode": "multi_threading"}
    summary = run_streaming(PipelineOptions(flags=[f"--{k}={v}" for k, v in flags.items()]))
    rows = sum(len(output_rows(broker, out, region)) for region in REGIONS)
    assert late and rows == total - late
    assert len(_late_lines(out)) == late
    assert summary.records_in == total + duplicated
    assert summary.duplicates == duplicated and summary.late == late
    assert summary.records_out == total - late and summary.dead_letters == 0
    assert summary.reconciled
