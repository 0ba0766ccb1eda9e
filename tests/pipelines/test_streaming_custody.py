"""A streaming run's custody statement (``custody-run.intoto.json``), checked by ``verify_run``.

One file-drop run (FnApiRunner, two workers; one file in the drop left unread by
``--max_files``) reads v1 records on time, v1 records an hour old
(late), record streams some of whose records are an hour old (late excerpts ``<id>#<i>``), a
line delivered twice (a duplicate), a line that is not base64 and a record whose ciphertext
was damaged (dead letters). Its statement names the files its feed read and verifies; every
tampering with what it left (a late file, a late line, an output, the counts) is refused.
Old batch statements (no ``late``, no ``source``) are covered in tests/custody.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.io.filesystem import FileMetadata
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from enclave_workers.records import INPUT_SCHEMA_FINGERPRINT
from envelope import EnvelopeError, read_header, seal_record_stream
from keybroker.identity import IDENTITY_PUBLIC_KEY_FILE, BrokerPublicKey, canonical_json
from pipelines import cli
from pipelines.custody_run import RUN_STATEMENT_NAME, verify_run
from pipelines.file_drop import _RecordInputFile, emitted_files
from pipelines.streaming import run_streaming
from pipelines.synthetic import REGIONS, write_partner_files
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pipelines.helpers import sealed_partner_files, spec_without_k_anonymity
from transforms.event_time import EVENT_TIME_CONTEXT_KEY, format_event_time
from transforms.write import STATEMENT_SUFFIX

HOUR = 3600.0


def _streams(broker: BrokerEnv, work: Path, now: float) -> tuple[list[bytes], int, int]:
    """Record-stream lines (10 records each), every third record of the first file's
    streams an hour old; (lines, records, late records)."""
    partner = write_partner_files(work / "stream-partner", 20, files_per_group=1, seed=61)[0]
    records = [line for line in partner.path.read_bytes().splitlines() if line.strip()]
    lines: list[bytes] = []
    late = 0
    for start in range(0, len(records), 10):
        chunk = records[start:start + 10]
        old = [i % 3 == 0 for i in range(len(chunk))]
        data_key, wrapped = broker.wrap_new_key(partner.region, partner.producer_id)
        lines.append(base64.b64encode(seal_record_stream(
            chunk, data_key=data_key, wrapped_key=wrapped, region=partner.region,
            producer_id=partner.producer_id, schema_fingerprint=INPUT_SCHEMA_FINGERPRINT,
            context={EVENT_TIME_CONTEXT_KEY: format_event_time(now)},
            event_times_ms=[round((now - (HOUR if o else 0.3 * i)) * 1000)
                            for i, o in enumerate(old)])))
        late += sum(old)
    return lines, len(records), late


@pytest.fixture(scope="module")
def drop_run(broker: BrokerEnv, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("streaming-custody")
    now = time.time()
    _, on_time = sealed_partner_files(broker, work, 48, event_time=now, seed=51)
    _, old = sealed_partner_files(broker, work, 6, event_time=now - HOUR, seed=52,
                                  sealed_dir="old")
    v1_old = sum(len(p.read_bytes().splitlines()) for p in old)
    v1_all = sum(len(p.read_bytes().splitlines()) for p in [*on_time, *old])
    drop = work / "drop"
    drop.mkdir()
    files = []
    for path in [*on_time, *old]:
        target = drop / f"{path.parent.name}-{path.name}"
        shutil.copyfile(path, target)
        files.append(target)
    first = files[0].read_bytes().splitlines()
    damaged = bytearray(base64.b64decode(first[1]))
    damaged[-3] ^= 0x40                                        # the tag fails: a dead letter
    first[1] = base64.b64encode(bytes(damaged))
    files[0].write_bytes(b"\n".join([*first, b"%%% not base64 %%%", first[2]]) + b"\n")
    stream_lines, stream_records, stream_late = _streams(broker, work, now)
    files.append(drop / "streams.sealed")
    files[-1].write_bytes(b"\n".join(stream_lines) + b"\n")
    # A file the feed does not read: the last in (modification time, path) order, beyond
    # --max_files. The statement must not name it, nor a listing of the drop afterwards.
    _, unread = sealed_partner_files(broker, work, 4, event_time=now, seed=53,
                                     sealed_dir="unread")
    shutil.copyfile(unread[0], drop / "zz-unread.sealed")
    os.utime(drop / "zz-unread.sealed", (now + HOUR, now + HOUR))
    out = work / "out"
    flags = {"input": str(drop / "*.sealed"), "output_root": str(out),
             "broker_url": broker.url, "tee": "simulated-sev-snp",
             "dev_tee_dir": str(broker.dev_tee_dir), "regions": ",".join(REGIONS),
             "window_seconds": 1, "poll_interval_seconds": 0.2,
             "max_files": len(files), "stop_after_seconds": 30,
             "feature_spec": str(spec_without_k_anonymity(work)),
             "direct_num_workers": 2, "direct_running_mode": "multi_threading"}
    summary = run_streaming(PipelineOptions(flags=[f"--{k}={v}" for k, v in flags.items()]))
    return {"out": out, "files": sorted(str(f) for f in files), "summary": summary,
            "late": v1_old + stream_late, "records": v1_all + 2 + stream_records,
            "broker_key_path": broker.state_dir / IDENTITY_PUBLIC_KEY_FILE,
            "broker_key": BrokerPublicKey.load(broker.state_dir / IDENTITY_PUBLIC_KEY_FILE)}


def _statement(out: Path) -> dict[str, Any]:
    return json.loads((out / RUN_STATEMENT_NAME).read_text())


def _save(out: Path, statement: dict[str, Any]) -> None:
    (out / RUN_STATEMENT_NAME).write_bytes(canonical_json(statement))


def _copy(drop_run: dict[str, Any], tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(drop_run["out"], out)
    return out


def _redigest(out: Path, name: str) -> None:
    """Make the run statement agree with a file as it is now (a consistent forgery)."""
    statement = _statement(out)
    for subject in statement["subject"]:
        if subject["name"] == name:
            subject["digest"]["sha256"] = hashlib.sha256((out / name).read_bytes()).hexdigest()
    _save(out, statement)


def _late_files(out: Path) -> list[Path]:
    return sorted((out / "late").glob("late-*.jsonl"))


def _refused(out: Path, drop_run: dict[str, Any]) -> str:
    verdict = verify_run(out, broker_key=drop_run["broker_key"])
    assert not verdict.ok
    return " | ".join(verdict.reasons)


def test_the_run_reconciles_with_late_duplicates_and_dead_letters(drop_run) -> None:
    summary = drop_run["summary"]
    assert summary.reconciled
    assert summary.records_in == drop_run["records"]
    assert summary.late == drop_run["late"] and summary.duplicates == 1
    assert summary.dead_letters == 2


def test_a_file_drop_run_statement_names_what_it_read_and_verifies(drop_run) -> None:
    out = drop_run["out"]
    predicate = _statement(out)["predicate"]
    assert predicate["source"] == "files"
    assert [entry["name"] for entry in predicate["inputs"]] == drop_run["files"]
    assert not any("unread" in entry["name"] for entry in predicate["inputs"])
    assert predicate["input_files"] == len(drop_run["files"])
    assert predicate["counts"]["late"] == drop_run["late"]
    named = {subject["name"] for subject in _statement(out)["subject"]}
    assert {f"late/{p.name}" for p in _late_files(out)} <= named
    assert any(name.startswith("dead-letter/") for name in named)
    assert any(name.endswith(STATEMENT_SUFFIX) for name in named)
    verdict = verify_run(out, broker_key=drop_run["broker_key"])
    assert verdict.ok, verdict.reasons
    assert verdict.facts["source"] == "files"
    assert verdict.facts["late_records"] == drop_run["late"] > 0
    assert verdict.facts["late_files"] == len(_late_files(out)) > 0
    assert verdict.facts["duplicates"] == 1 and verdict.facts["dead_letter_records"] == 2
    assert verdict.facts["input_records"] == drop_run["records"]
    late_ids = [json.loads(line)["record_id"] for path in _late_files(out)
                for line in path.read_bytes().splitlines()]
    assert any("#" in i for i in late_ids) and any("#" not in i for i in late_ids)


def test_the_cli_verifies_the_run_and_reports_late_records(
        drop_run, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["custody", "verify", "--run", str(drop_run["out"]), "--broker-key",
                     str(drop_run["broker_key_path"])])
    verdict = json.loads(capsys.readouterr().out)
    assert code == 0 and verdict["ok"]
    assert verdict["facts"]["late_records"] == drop_run["late"]
    with pytest.raises(SystemExit):
        cli.main(["custody", "verify", "--help"])
    assert "late records" in capsys.readouterr().out


def test_a_removed_late_file_is_refused(drop_run, tmp_path: Path) -> None:
    out = _copy(drop_run, tmp_path)
    gone = _late_files(out)[0]
    gone.unlink()
    assert "named in the run statement but missing" in _refused(out, drop_run)
    statement = _statement(out)                         # and removed from the index too
    statement["subject"] = [s for s in statement["subject"]
                            if s["name"] != f"late/{gone.name}"]
    _save(out, statement)
    reasons = _refused(out, drop_run)
    assert "in no output statement and no dead letter or late file" in reasons
    assert "late records" in reasons


def test_a_dropped_late_line_is_refused_even_when_the_index_is_rewritten(
        drop_run, tmp_path: Path) -> None:
    out = _copy(drop_run, tmp_path)
    path = max(_late_files(out), key=lambda p: len(p.read_bytes().splitlines()))
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join(lines[1:]) + b"\n" if len(lines) > 1 else b"")
    assert "differs from the run statement's digest" in _refused(out, drop_run)
    _redigest(out, f"late/{path.name}")
    reasons = _refused(out, drop_run)
    assert f"late records {drop_run['late'] - 1} +" in reasons
    assert f"the run statement says late={drop_run['late']}" in reasons


def test_a_late_file_not_named_is_refused(drop_run, tmp_path: Path) -> None:
    out = _copy(drop_run, tmp_path)
    extra = _late_files(out)[0]
    shutil.copyfile(extra, extra.with_name("late-" + "0" * 32 + ".jsonl"))
    reasons = _refused(out, drop_run)
    assert f"late/late-{'0' * 32}.jsonl is not named in the run statement" in reasons


def test_a_late_record_that_is_also_in_an_output_is_refused(drop_run, tmp_path: Path) -> None:
    out = _copy(drop_run, tmp_path)
    statement = _statement(out)
    output = next(s["name"] for s in statement["subject"]
                  if not s["name"].endswith(STATEMENT_SUFFIX) and "/part-" in s["name"])
    signed = json.loads((out / (output + STATEMENT_SUFFIX)).read_text())
    claimed = json.loads(base64.b64decode(signed["payload"]))["predicate"]["inputs"][
        "envelope_ids"][0]
    sealed = next(line for f in drop_run["files"] for line in Path(f).read_bytes().splitlines()
                  if _envelope_id(line) == claimed)
    path = _late_files(out)[0]
    path.write_bytes(path.read_bytes() + json.dumps({
        "record_id": claimed, "event_time": "1970-01-01T00:00:00.000Z",
        "arrival": "1970-01-01T00:00:01.000Z", "sealed_b64": sealed.decode()}).encode() + b"\n")
    _redigest(out, f"late/{path.name}")
    assert f"late record {claimed} is also in output" in _refused(out, drop_run)


def _envelope_id(line: bytes) -> str | None:
    try:
        return read_header(base64.b64decode(line, validate=True))[0].envelope_id.hex()
    except (ValueError, EnvelopeError):
        return None


def test_a_removed_output_is_refused(drop_run, tmp_path: Path) -> None:
    out = _copy(drop_run, tmp_path)
    statement = _statement(out)
    output = next(s["name"] for s in statement["subject"]
                  if not s["name"].endswith(STATEMENT_SUFFIX) and "/part-" in s["name"])
    (out / output).unlink()
    (out / (output + STATEMENT_SUFFIX)).unlink()
    assert "named in the run statement but missing" in _refused(out, drop_run)
    statement["subject"] = [s for s in statement["subject"]
                            if s["name"] not in (output, output + STATEMENT_SUFFIX)]
    _save(out, statement)
    # Its records are gone (its envelopes may still be named by another output: a stream
    # split over windows is in several).
    reasons = _refused(out, drop_run)
    assert f"input records {drop_run['records']} != outputs' records" in reasons
    assert "the run statement says records_out=" in reasons


@pytest.mark.parametrize("count", ["late", "duplicates", "records_in"])
def test_edited_counts_are_refused(drop_run, tmp_path: Path, count: str) -> None:
    out = _copy(drop_run, tmp_path)
    statement = _statement(out)
    statement["predicate"]["counts"][count] += 1
    _save(out, statement)
    assert f"the run statement says {count}=" in _refused(out, drop_run)


def test_a_statement_naming_fewer_files_than_it_read_asks_for_the_inputs(
        drop_run, tmp_path: Path) -> None:
    out = _copy(drop_run, tmp_path)
    statement = _statement(out)
    statement["predicate"]["inputs"] = statement["predicate"]["inputs"][1:]
    _save(out, statement)
    assert "pass the files it read with --input" in _refused(out, drop_run)
    verdict = verify_run(out, broker_key=drop_run["broker_key"],
                         inputs=[Path(f) for f in drop_run["files"]])
    assert verdict.ok, verdict.reasons
    missing_one = verify_run(out, broker_key=drop_run["broker_key"],
                             inputs=[Path(f) for f in drop_run["files"][1:]])
    assert not missing_one.ok


def test_emitted_files_keeps_every_name_over_two_workers_and_many_bundles() -> None:
    """Beam 2.77's FnApiRunner keeps one bundle's string set in ``metrics().query()``;
    ``emitted_files`` still gives every file the feed step saw, and the count."""
    paths = [f"/drop/partner-{i:03}.sealed" for i in range(60)]
    pipeline = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(flags=[
        "--direct_num_workers=2", "--direct_running_mode=multi_threading"]))
    _ = (pipeline
         | beam.Create([("pattern", FileMetadata(path, 1)) for path in paths])
         | beam.Reshuffle()
         | beam.ParDo(_RecordInputFile()))
    result = pipeline.run()
    result.wait_until_finish()
    names, emitted = emitted_files(result)
    assert emitted == len(paths)
    assert names == set(paths)


def test_a_late_line_relabelled_as_another_record_is_refused(drop_run, tmp_path: Path) -> None:
    out = _copy(drop_run, tmp_path)
    path = next(p for p in _late_files(out) if b"#" in p.read_bytes())
    lines = [json.loads(line) for line in path.read_bytes().splitlines()]
    victim = next(entry for entry in lines if "#" in entry["record_id"])
    stream_id, index = victim["record_id"].split("#")
    victim["record_id"] = f"{stream_id}#{int(index) + 1}"
    path.write_bytes(b"".join(json.dumps(entry, sort_keys=True).encode() + b"\n"
                              for entry in lines))
    _redigest(out, f"late/{path.name}")
    reasons = _refused(out, drop_run)
    assert f"late record {stream_id}#{int(index) + 1} in {path.name} holds sealed bytes of " \
           f"{stream_id}#{index}" in reasons
