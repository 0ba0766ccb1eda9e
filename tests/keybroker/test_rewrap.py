"""keybroker.rewrap: sealed record and batch files move to the KEK's new primary version with
every payload byte unchanged; one unwrap per DEK; atomic, resumable, reported file by file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from envelope import DataKey, open_batch, open_record, read_header, seal_record
from keybroker.kms.base import KeyDestroyedError
from keybroker.rewrap import RewrapError, rewrap_paths
from tests.keybroker.rewrap_support import (
    EU_KEK,
    SCHEMA,
    CountingKms,
    envelopes_in,
    issue_key,
    kek_versions,
    new_keyring,
    split,
    unwrap_key,
    write_batch_file,
    write_record_file,
)


@pytest.fixture
def keyring(tmp_path: Path):
    return new_keyring(tmp_path)


@pytest.fixture
def data(tmp_path: Path, keyring) -> dict[str, object]:
    """A data directory: records (2 DEKs), a raw batch, a base64 batch line, a US file, notes."""
    root = tmp_path / "data"
    records = write_record_file(root / "partner" / "records.sealed", keyring, records=5,
                                per_key=3, blank_line_after=1)
    batch = write_batch_file(root / "eu" / "part-0.sbatch", keyring, size=5000)
    us_records = write_record_file(root / "us" / "records.sealed", keyring, region="us")
    (root / "notes.txt").write_text("not sealed\n")
    return {"root": root, "records": records, "batch": batch, "us": us_records}


def run(paths, kms, tmp_path: Path, **options):
    return rewrap_paths(paths, kms=kms, kek_uri=EU_KEK,
                        journal_path=tmp_path / "journal.jsonl", **options)


def test_rewrap_keeps_every_payload_byte_and_moves_to_the_new_version(
    tmp_path: Path, keyring, data
) -> None:
    root = data["root"]
    files = {name: root / name for name in
             ("partner/records.sealed", "eu/part-0.sbatch", "us/records.sealed")}
    before = {name: envelopes_in(path) for name, path in files.items()}
    raw_before = {name: path.read_bytes() for name, path in files.items()}
    assert keyring.rotate(EU_KEK).version == "2"

    report = run([root], keyring, tmp_path)

    assert report.ok
    assert report.target_version == "2"
    assert sorted(report.files_changed) == sorted(
        str(files[name].resolve()) for name in ("partner/records.sealed", "eu/part-0.sbatch")
    )
    assert report.envelopes_rewrapped == 6  # 5 records + 1 batch
    assert report.data_keys == 3  # two record DEKs, one batch DEK
    skipped = {Path(entry["path"]).name: entry["reason"] for entry in report.files_skipped}
    assert skipped["notes.txt"] == "not a sealed file"
    assert "nothing under an older version" in skipped["records.sealed"]  # the US file
    assert raw_before["us/records.sealed"] == files["us/records.sealed"].read_bytes()

    for name in ("partner/records.sealed", "eu/part-0.sbatch"):
        after = envelopes_in(files[name])
        assert len(after) == len(before[name])
        assert set(kek_versions(files[name])) == {"2"}
        for old, new in zip(before[name], after, strict=True):
            old_core, old_keys, old_body = split(old)
            new_core, new_keys, new_body = split(new)
            assert new_core == old_core and new_body == old_body  # payload byte for byte
            assert new_keys != old_keys  # the key block and tag changed
    plaintexts = [open_record(envelope, unwrap_key(keyring, envelope))
                  for envelope in envelopes_in(files["partner/records.sealed"])]
    assert plaintexts == data["records"]
    (batch,) = envelopes_in(files["eu/part-0.sbatch"])
    assert open_batch(batch, unwrap_key(keyring, batch)) == data["batch"]
    # The blank line and the line structure survive.
    lines = files["partner/records.sealed"].read_bytes().split(b"\n")
    assert lines[2] == b"" and len(lines) == 7


def test_rewrapped_files_survive_the_shredding_of_the_old_version(
    tmp_path: Path, keyring, data
) -> None:
    root = data["root"]
    kept_aside = tmp_path / "not-rewrapped" / "records.sealed"
    write_record_file(kept_aside, keyring, records=2)
    keyring.rotate(EU_KEK)
    assert run([root], keyring, tmp_path).ok
    keyring.destroy_version(EU_KEK, "1")

    for envelope in envelopes_in(root / "partner" / "records.sealed"):
        open_record(envelope, unwrap_key(keyring, envelope))
    (batch,) = envelopes_in(root / "eu" / "part-0.sbatch")
    assert open_batch(batch, unwrap_key(keyring, batch)) == data["batch"]

    stranded = envelopes_in(kept_aside)[0]
    with pytest.raises(KeyDestroyedError, match="version 1 was destroyed"):
        unwrap_key(keyring, stranded)
    content = kept_aside.read_bytes()
    late = run([kept_aside], keyring, tmp_path)
    assert late.files_failed == [{
        "path": str(kept_aside.resolve()),
        "reason": late.files_failed[0]["reason"],
    }]
    assert late.files_failed[0]["reason"].startswith(
        f"key destroyed: KEK {EU_KEK} version 1"
    )
    assert kept_aside.read_bytes() == content


def test_each_distinct_dek_is_unwrapped_once(tmp_path: Path, keyring) -> None:
    root = tmp_path / "data"
    for index in range(3):
        write_record_file(root / f"r{index}.sealed", keyring, records=4, per_key=2)
    keyring.rotate(EU_KEK)

    def key_ids() -> set[str]:
        return {read_header(envelope)[0].wrapped_key.key_id
                for path in sorted(root.iterdir()) for envelope in envelopes_in(path)}

    old_key_ids = key_ids()
    kms = CountingKms(keyring)
    report = run([root], kms, tmp_path)
    assert report.envelopes_rewrapped == 12 and report.data_keys == 6
    new_key_ids = key_ids()
    assert len(old_key_ids) == len(new_key_ids) == 6
    # each old wrapped DEK unwrapped once; each new one wrapped once and checked by one unwrap
    assert kms.wraps == 6
    assert set(kms.unwraps) == old_key_ids | new_key_ids
    assert all(count == 1 for count in kms.unwraps.values())


def test_an_interrupted_run_resumes_without_rewrapping_any_file_twice(
    tmp_path: Path, keyring
) -> None:
    root = tmp_path / "data"
    for index in range(5):
        write_record_file(root / f"f{index}.sealed", keyring, records=2, per_key=2)
    keyring.rotate(EU_KEK)
    # Each file has one DEK: two unwraps (old key, check of the new one). Crash on file 3.
    crashing = CountingKms(keyring, crash_on_unwrap=5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run([root], crashing, tmp_path)
    journal = [json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines()]
    done = [Path(entry["path"]).name for entry in journal]
    assert done == ["f0.sealed", "f1.sealed"]
    assert [set(kek_versions(root / f"f{i}.sealed")) for i in range(5)] == [
        {"2"}, {"2"}, {"1"}, {"1"}, {"1"}
    ]
    assert not list(root.glob(".*.tmp"))  # the interrupted file left no temporary behind
    first_run = {name: os.stat(root / name) for name in done}

    resumed = CountingKms(keyring)
    report = run([root], resumed, tmp_path)
    assert report.ok
    assert [Path(p).name for p in report.files_changed] == ["f2.sealed", "f3.sealed", "f4.sealed"]
    assert {Path(e["path"]).name: e["reason"] for e in report.files_skipped} == {
        "f0.sealed": "done in an earlier run", "f1.sealed": "done in an earlier run"
    }
    for name, status in first_run.items():
        now = os.stat(root / name)
        assert (now.st_ino, now.st_mtime_ns) == (status.st_ino, status.st_mtime_ns)
    assert sum(resumed.unwraps.values()) == 6  # three files, one DEK each, no more
    assert all(set(kek_versions(root / f"f{i}.sealed")) == {"2"} for i in range(5))


def test_a_file_already_under_the_target_version_is_left_alone(tmp_path: Path, keyring) -> None:
    path = tmp_path / "data" / "records.sealed"
    write_record_file(path, keyring, records=3)
    keyring.rotate(EU_KEK)
    assert run([path], keyring, tmp_path).files_changed == [str(path.resolve())]
    status = os.stat(path)
    again = rewrap_paths([path], kms=CountingKms(keyring), kek_uri=EU_KEK,
                         journal_path=tmp_path / "other-journal.jsonl")
    assert again.files_changed == [] and again.envelopes_skipped == 3
    assert "nothing under an older version" in again.files_skipped[0]["reason"]
    assert os.stat(path).st_mtime_ns == status.st_mtime_ns


def test_failures_are_reported_and_leave_the_file_untouched(tmp_path: Path, keyring) -> None:
    root = tmp_path / "data"
    broken = root / "broken.sealed"
    write_record_file(broken, keyring, records=3)
    lines = broken.read_bytes().splitlines(keepends=True)
    lines[1] = b"bm90IGFuIGVudmVsb3Bl\n"  # base64 of "not an envelope"
    broken.write_bytes(b"".join(lines))
    mismatched = root / "mismatched.sealed"  # sealed under one DEK, header names another
    data_key = DataKey.generate()
    _, other_wrapped = issue_key(keyring, "eu", "acme")
    envelope = seal_record(b"{}", data_key=data_key, wrapped_key=other_wrapped, region="eu",
                           producer_id="acme", schema_fingerprint=SCHEMA, context={})
    import base64

    mismatched.write_bytes(base64.b64encode(envelope) + b"\n")
    bad_batch = root / "bad.sbatch"
    bad_batch.write_bytes(b"PK\x03\x04 not sealed")
    contents = {path: path.read_bytes() for path in (broken, mismatched, bad_batch)}
    keyring.rotate(EU_KEK)

    report = run([root], keyring, tmp_path)

    reasons = {Path(entry["path"]).name: entry["reason"] for entry in report.files_failed}
    assert reasons["broken.sealed"].startswith("line 2: not a base64 sealed envelope")
    assert reasons["mismatched.sealed"] == "line 1: cannot rewrap: envelope authentication failed"
    assert reasons["bad.sbatch"] == "not a sealed envelope (bad magic)"
    assert not report.ok and report.files_changed == []
    for path, content in contents.items():
        assert path.read_bytes() == content
    assert not list(root.glob(".*"))


def test_target_version_must_be_the_primary(tmp_path: Path, keyring, data) -> None:
    keyring.rotate(EU_KEK)
    with pytest.raises(RewrapError, match=r"version 1 is not the primary version .* is 2"):
        run([data["root"]], keyring, tmp_path, target_version="1")
    assert run([data["root"]], keyring, tmp_path, target_version="2").ok


def test_a_missing_path_is_an_error(tmp_path: Path, keyring) -> None:
    with pytest.raises(RewrapError, match="does not exist"):
        run([tmp_path / "nowhere"], keyring, tmp_path)


def test_file_mode_is_kept(tmp_path: Path, keyring) -> None:
    path = tmp_path / "data" / "records.sealed"
    write_record_file(path, keyring, records=1)
    path.chmod(0o640)
    keyring.rotate(EU_KEK)
    assert run([path], keyring, tmp_path).ok
    assert path.stat().st_mode & 0o777 == 0o640
