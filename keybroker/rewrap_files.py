"""The file side of a rewrap run: finding sealed files, the run journal, atomic replacement.

``find_sealed_files`` lists files named directly and the non-hidden files under named
directories. ``RewrapJournal`` is a JSON-lines file (bounded in size) of the files a run
completed for one KEK and target version, appended and fsynced entry by entry, so that an
interrupted run can be repeated. ``AtomicReplacement`` writes a sibling temporary file that
replaces the original on commit (fsync, rename, directory fsync) and is deleted otherwise.
This module does not read envelopes or talk to a KMS (``keybroker.rewrap`` does).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from keybroker.kms.base import KmsError

__all__ = [
    "MAX_JOURNAL_BYTES",
    "AtomicReplacement",
    "RewrapError",
    "RewrapJournal",
    "find_sealed_files",
]

MAX_JOURNAL_BYTES = 64 << 20


class RewrapError(KmsError):
    """A rewrap run cannot start (bad target version, unreadable journal)."""


class RewrapJournal:
    """Completed files of one (KEK, target version), appended and fsynced one by one."""

    def __init__(self, path: Path, kek_uri: str, target_version: str) -> None:
        self._path = Path(path)
        self._kek_uri = kek_uri
        self._target = target_version
        self._done = self._load()

    def __contains__(self, file: Path) -> bool:
        return str(file) in self._done

    def record(self, file: Path, status: str) -> None:
        entry = {"kek": self._kek_uri, "target_version": self._target,
                 "path": str(file), "status": status}
        self._path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(descriptor, "ab") as handle:
            handle.write(json.dumps(entry, sort_keys=True).encode("utf-8") + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._done.add(str(file))

    def _load(self) -> set[str]:
        if not self._path.exists():
            return set()
        size = self._path.stat().st_size
        if size > MAX_JOURNAL_BYTES:
            raise RewrapError(f"journal {self._path} is {size} bytes, over {MAX_JOURNAL_BYTES}")
        done: set[str] = set()
        for number, line in enumerate(self._path.read_bytes().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise RewrapError(f"journal {self._path}:{number}: not a JSON line") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                raise RewrapError(f"journal {self._path}:{number}: no path")
            if entry.get("kek") == self._kek_uri and entry.get("target_version") == self._target:
                done.add(entry["path"])
        return done


def find_sealed_files(
    paths: Iterable[Path],
    *,
    exclude: Iterable[Path] = (),
    on_skipped: Callable[[Path, str], None] | None = None,
) -> Iterator[Path]:
    """Files named directly, and every non-hidden regular file under named directories (sorted).

    Inside a named directory no symbolic link is followed (a link, to a file or a
    directory, is reported to ``on_skipped`` and left alone), so a rewrap never rewrites a
    file outside the folder it was given. A file named directly is taken as named.
    """
    excluded = {Path(path).resolve() for path in exclude}
    for path in map(Path, paths):
        if path.is_dir():
            candidates = list(_regular_files_under(path, on_skipped))
        elif path.is_file():
            candidates = [path]
        else:
            raise RewrapError(f"{path} does not exist")
        for candidate in candidates:
            if candidate.resolve() not in excluded:
                yield candidate.resolve()


def _regular_files_under(
    root: Path, on_skipped: Callable[[Path, str], None] | None
) -> Iterator[Path]:
    resolved_root = root.resolve()
    for candidate in sorted(root.rglob("*")):
        relative = candidate.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if any((root / Path(*relative.parts[:depth])).is_symlink()
               for depth in range(1, len(relative.parts) + 1)):
            if candidate.is_symlink() and on_skipped is not None:
                on_skipped(candidate, "a symbolic link: not followed")
            continue
        if not candidate.is_file():
            continue
        if not candidate.resolve().is_relative_to(resolved_root):
            if on_skipped is not None:
                on_skipped(candidate, f"outside {root}: not followed")
            continue
        yield candidate


class AtomicReplacement:
    """A sibling temporary file that replaces ``file`` on ``commit`` (fsync, rename, directory
    fsync) and is deleted otherwise, so a reader sees the old file or the new one."""

    def __init__(self, file: Path) -> None:
        self._file = file
        mode = file.stat().st_mode & 0o777
        self._temporary = file.with_name(f".{file.name}.rewrap-{secrets.token_hex(6)}.tmp")
        descriptor = os.open(
            self._temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode
        )
        self.handle: BinaryIO = os.fdopen(descriptor, "wb")
        self._committed = False

    def commit(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self._temporary, self._file)
        self._committed = True
        directory = os.open(self._file.parent, os.O_RDONLY)
        try:
            with contextlib.suppress(OSError):
                os.fsync(directory)
        finally:
            os.close(directory)

    def __enter__(self) -> AtomicReplacement:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._committed:
            self.handle.close()
            with contextlib.suppress(FileNotFoundError):
                self._temporary.unlink()
