"""The write commit: temporary name, rename over the final name, no ``exists`` probe, no
orphan after a failure, leftovers cleaned; and dead-letter files named by their contents."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms.window import GlobalWindow, IntervalWindow
from apache_beam.utils.timestamp import Timestamp

from enclave_workers.batch_processor import DeadLetter, SealedOutput
from transforms import WriteDeadLetters
from transforms.write import clean_temporary_files, commit_file, output_file_name


def _refuse_exists(*_: object) -> bool:
    raise AssertionError("commit_file must not ask FileSystems.exists (Azure raises 404)")


def test_commit_replaces_through_a_rename_that_will_not_replace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rename = FileSystems.rename

    def no_replace_rename(sources: list[str], destinations: list[str]) -> None:
        if Path(destinations[0]).exists():           # like a store whose rename refuses
            raise BeamIOError("exists", {(sources[0], destinations[0]): OSError("exists")})
        rename(sources, destinations)

    monkeypatch.setattr(FileSystems, "exists", staticmethod(_refuse_exists))
    monkeypatch.setattr(FileSystems, "rename", staticmethod(no_replace_rename))
    first = commit_file(str(tmp_path), "part-a.sbatch", [b"first"], "application/octet-stream")
    again = commit_file(str(tmp_path), "part-a.sbatch", [b"sec", b"ond"],
                        "application/octet-stream")
    assert first == again and Path(again).read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-a.sbatch"]


def test_a_failed_write_or_rename_leaves_no_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_rename(sources: list[str], destinations: list[str]) -> None:
        raise BeamIOError("down", {(sources[0], destinations[0]): OSError("down")})

    monkeypatch.setattr(FileSystems, "rename", staticmethod(broken_rename))
    with pytest.raises(BeamIOError):
        commit_file(str(tmp_path), "part-b.sbatch", [b"x"], "application/octet-stream")

    def chunks():
        yield b"half"
        raise OSError("the worker's disk is full")

    with pytest.raises(OSError, match="disk"):
        commit_file(str(tmp_path), "part-c.sbatch", chunks(), "application/octet-stream")
    assert list(tmp_path.iterdir()) == []


def test_leftover_temporary_files_are_cleaned(tmp_path: Path) -> None:
    (tmp_path / "eu").mkdir()
    (tmp_path / "eu" / ".part-x.sbatch.tmp").write_bytes(b"left by a killed worker")
    (tmp_path / "eu" / "part-y.sbatch").write_bytes(b"a committed output")
    removed = clean_temporary_files([str(tmp_path / "eu"), str(tmp_path / "missing")])
    assert [Path(p).name for p in removed] == [".part-x.sbatch.tmp"]
    assert [p.name for p in (tmp_path / "eu").iterdir()] == ["part-y.sbatch"]


def test_dead_letter_files_are_named_by_their_contents(tmp_path: Path) -> None:
    letters = [DeadLetter(f"id-{i}", "reason", "parse", bytes([i])) for i in range(40)]

    def names(root: Path, items: list[DeadLetter]) -> set[str]:
        with beam.Pipeline(runner=FnApiRunner()) as p:
            p | beam.Create(items) | WriteDeadLetters(str(root))
        return {f.name for f in (root / "dead-letter").iterdir()}

    first = names(tmp_path / "a", letters)
    assert names(tmp_path / "a", list(reversed(letters))) == first   # rerun: same names
    assert names(tmp_path / "b", letters[:-1]) != first             # other contents


def test_output_names_carry_the_window_in_streaming_only() -> None:
    output = SealedOutput("eu", "acme", b"", 1, 1, bytes(range(16)))
    assert output_file_name(output, GlobalWindow()) == \
        "part-00010203-0405-0607-0809-0a0b0c0d0e0f.sbatch"
    assert output_file_name(output, IntervalWindow(Timestamp(60), Timestamp(120))) == (
        "part-00010203-0405-0607-0809-0a0b0c0d0e0f-19700101T000100.000Z-"
        "19700101T000200.000Z.sbatch")
