"""Record streams (record profile 2) through the batch pipeline: the same rows as v1 records,
accounting in records, per-record dead letters still sealed, stream-level failures counted
per record, retries and several worker processes."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from envelope import (
    KIND_RECORD_STREAM,
    DataKey,
    dek_wrap_aad,
    read_header,
    read_record_stream,
    read_stream_record,
    seal_record_stream,
)
from keybroker.identity import BrokerPublicKey
from keybroker.kms.local import LocalKeyring
from pipelines.batch import run_batch
from pipelines.custody_run import verify_run
from pipelines.synthetic import REGIONS
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pipelines.helpers import sealed_partner_files, spec_without_k_anonymity
from tests.pipelines.run_support import (
    batch_options,
    output_names,
    output_rows,
    run_with_hook,
    worker_options,
)
from transforms.dead_letters import DEAD_LETTER_DIR
from transforms.output_region import sealed_bytes_region

RECORDS = 160
PER_STREAM = 25


def _dead_letters(root: Path) -> list[dict]:
    return sorted((json.loads(line) for f in root.rglob(f"{DEAD_LETTER_DIR}/dl-*.jsonl")
                   for line in f.read_bytes().splitlines()), key=lambda d: d["record_id"])


def _lines(path: Path) -> list[bytes]:
    return [base64.b64decode(line) for line in path.read_bytes().splitlines() if line.strip()]


def _write_lines(path: Path, envelopes: list[bytes]) -> None:
    path.write_bytes(b"".join(base64.b64encode(e) + b"\n" for e in envelopes))


@pytest.mark.usefixtures("worker_processes")
def test_streams_write_the_rows_v1_records_write_on_two_workers(
        broker: BrokerEnv, tmp_path: Path) -> None:
    sealed_partner_files(broker, tmp_path, RECORDS, sealed_dir="v1")
    _, v2 = sealed_partner_files(broker, tmp_path, RECORDS, sealed_dir="v2", profile=2,
                                 records_per_stream=PER_STREAM)
    kinds = {read_header(e)[0].kind for path in v2 for e in _lines(path)}
    assert kinds == {KIND_RECORD_STREAM}
    streams = sum(len(_lines(path)) for path in v2)
    assert streams < RECORDS // 5

    # Without k-anonymity, so that every record is one row whatever the batches are.
    spec = spec_without_k_anonymity(tmp_path)
    one = run_batch(batch_options(broker, str(tmp_path / "v1" / "*.sealed"), tmp_path / "o1",
                                  feature_spec=spec))
    two = run_batch(worker_options(broker, str(tmp_path / "v2" / "*.sealed"), tmp_path / "o2",
                                   2, feature_spec=spec))
    assert one.reconciled and two.reconciled
    assert (two.records_in, two.records_out, two.dead_letters, two.duplicates) == (
        RECORDS, one.records_out, 0, 0)
    assert two.rows_out == one.rows_out == RECORDS
    for region in REGIONS:
        assert output_rows(broker, tmp_path / "o2", region) == \
            output_rows(broker, tmp_path / "o1", region)


def test_retried_writes_and_a_rerun_rewrite_the_same_files(broker: BrokerEnv,
                                                            tmp_path: Path) -> None:
    sealed_partner_files(broker, tmp_path, RECORDS, profile=2,
                                records_per_stream=PER_STREAM)
    pattern = str(tmp_path / "sealed" / "*.sealed")
    clean = run_batch(batch_options(broker, pattern, tmp_path / "clean"))
    markers = tmp_path / "markers"
    markers.mkdir()
    options = batch_options(broker, pattern, tmp_path / "retried")
    failures = 0
    for _ in range(len(output_names(tmp_path / "clean")) + 1):
        try:     # FnApiRunner does not retry a bundle: the job is run again until it passes
            retried = run_with_hook(options, "FailFirstAttempt", str(markers))
            break
        except Exception as exc:                       # the runner wraps the DoFn's error
            assert "injected failure" in str(exc)
            failures += 1
    else:
        pytest.fail("the job never finished")
    assert failures >= 1
    again = run_batch(options)
    for summary in (clean, retried, again):
        assert summary.reconciled and summary.records_in == RECORDS
        assert summary.records_out == clean.records_out
    assert output_names(tmp_path / "retried") == output_names(tmp_path / "clean")
    for region in REGIONS:
        assert output_rows(broker, tmp_path / "retried", region) == \
            output_rows(broker, tmp_path / "clean", region)


def test_bad_records_and_streams_are_dead_letters_counted_in_records(
        broker: BrokerEnv, tmp_path: Path) -> None:
    files, sealed = sealed_partner_files(broker, tmp_path, 120, profile=2,
                                         records_per_stream=8)
    eu = next(p for p, f in zip(sealed, files, strict=True) if f.region == "eu")
    streams = _lines(eu)
    assert len(streams) >= 3

    # A flipped ciphertext byte in record 2 of the first stream: that record fails alone.
    first = bytearray(streams[0])
    layout = read_record_stream(bytes(first))
    first[layout.frame_offsets[2] + 30] ^= 0x01
    # A truncated stream: its structure does not read (one line, one dead letter).
    truncated = streams[1][:-5]
    truncated_records = read_record_stream(streams[1]).record_count
    # A stream sealed by a partner with one record that is not JSON, under a fresh DEK.
    keyring = LocalKeyring.open(broker.settings.keyring_path)
    data_key = DataKey.generate()
    kek = keyring.kek_for_region("eu")
    wrapped = keyring.wrap(kek, data_key.secret_bytes(), dek_wrap_aad("eu", "acme"))
    header = read_header(streams[2])[0]
    rows = [b'{"customer_id":"c-1","name":"A B","email":"a@example.org","amount":1.5,'
            b'"event_time":"2025-01-01T00:00:00Z","region":"eu"}', b"not json at all"]
    mixed = seal_record_stream(rows, data_key=data_key, wrapped_key=wrapped, region="eu",
                               producer_id="acme",
                               schema_fingerprint=header.schema_fingerprint,
                               context=dict(header.context))
    _write_lines(eu, [bytes(first), truncated, *streams[2:], mixed, streams[2]])

    summary = run_batch(batch_options(broker, str(tmp_path / "sealed" / "*.sealed"),
                                      tmp_path / "out"))
    copy = read_record_stream(streams[2]).record_count
    # The truncated stream's header still says how many records it held: all are dead.
    expected_in = 120 + 2 + copy
    assert summary.records_in == expected_in
    assert summary.reconciled
    assert summary.duplicates == copy
    assert summary.dead_letters == truncated_records + 2

    letters = _dead_letters(tmp_path / "out")
    by_stage = {d["stage"]: d for d in letters}
    assert set(by_stage) == {"parse", "open", "decode"}
    tampered = by_stage["open"]
    assert tampered["record_id"] == f"{layout.header.envelope_id.hex()}#2"
    assert tampered["records"] == 1 and "authentication" in tampered["reason"]
    excerpt = read_stream_record(base64.b64decode(tampered["sealed_b64"]))
    assert excerpt.index == 2 and excerpt.header.region == "eu"
    bad_json = by_stage["decode"]
    assert bad_json["record_id"].endswith("#1") and bad_json["records"] == 1
    assert by_stage["parse"]["records"] == truncated_records
    # A record's excerpt names its region, so its dead letter goes to that region's sink.
    assert sealed_bytes_region(base64.b64decode(tampered["sealed_b64"])) == "eu"
    # Custody: every record of every stream is in an output statement or a dead letter.
    verdict = verify_run(tmp_path / "out",
                         broker_key=BrokerPublicKey.load(broker.settings.identity_path))
    assert verdict.ok, verdict.reasons
    assert verdict.facts["input_records"] == expected_in
    assert verdict.facts["duplicates"] == copy


def test_a_stream_whose_header_fails_authentication_dead_letters_all_of_its_records(
        broker: BrokerEnv, tmp_path: Path) -> None:
    _, sealed = sealed_partner_files(broker, tmp_path, 40, profile=2, records_per_stream=10)
    path = sealed[0]
    streams = _lines(path)
    layout = read_record_stream(streams[0])
    forged = bytearray(streams[0])
    forged[layout.header_length - 1] ^= 0x01          # the header tag: the whole stream
    _write_lines(path, [bytes(forged), *streams[1:]])
    summary = run_batch(batch_options(broker, str(tmp_path / "sealed" / "*.sealed"),
                                      tmp_path / "out"))
    assert summary.reconciled and summary.records_in == 40
    assert summary.dead_letters == layout.record_count
    [letter] = _dead_letters(tmp_path / "out")
    assert letter["stage"] == "open" and letter["records"] == layout.record_count
    assert letter["record_id"] == layout.header.envelope_id.hex()
    assert base64.b64decode(letter["sealed_b64"]) == bytes(forged)


def test_record_streams_beside_v1_records_in_a_streaming_run(
        broker: BrokerEnv, tmp_path: Path) -> None:
    """Streaming runs take record streams beside v1 records (a Pub/Sub message, a line of a
    dropped file): every record of both is written, none is a dead letter
    (tests/pipelines/test_streaming_record_streams.py has the windows, late records and
    duplicates)."""
    from apache_beam.coders import BytesCoder
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing import test_stream
    from apache_beam.transforms.window import TimestampedValue
    from apache_beam.utils.timestamp import Timestamp

    from pipelines.streaming import run_streaming

    _, v1 = sealed_partner_files(broker, tmp_path, 20, event_time=10.0, sealed_dir="v1")
    _, v2 = sealed_partner_files(broker, tmp_path, 20, event_time=10.0, sealed_dir="v2",
                                 profile=2, records_per_stream=5)
    stream_line = v2[0].read_bytes().splitlines()[0]
    stream_records = read_record_stream(base64.b64decode(stream_line)).record_count
    lines = [line for path in v1 for line in path.read_bytes().splitlines() if line]
    elements = [TimestampedValue(line, 1 + i) for i, line in enumerate([*lines, stream_line])]
    source = (test_stream.TestStream(coder=BytesCoder())
              .advance_watermark_to(Timestamp(0))
              .add_elements(elements)
              .advance_watermark_to_infinity())
    flags = {"output_root": str(tmp_path / "out"), "broker_url": broker.url,
             "tee": "simulated-sev-snp", "dev_tee_dir": str(broker.dev_tee_dir),
             "regions": ",".join(REGIONS), "message_format": "base64",
             "window_seconds": 60, "min_batch_size": 500,
             "feature_spec": str(spec_without_k_anonymity(tmp_path))}
    run_streaming(PipelineOptions(flags=[f"--{k}={v}" for k, v in flags.items()]),
                  source=source)
    assert not _dead_letters(tmp_path / "out")
    rows = sum(len(output_rows(broker, tmp_path / "out", region)) for region in REGIONS)
    assert rows == len(lines) + stream_records
