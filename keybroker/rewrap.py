"""Rewrap sealed files under a KEK's new primary version, without re-encrypting any payload.

After ``sealbeam keys rotate`` new data keys are wrapped under the KEK's new version, but
files sealed earlier still name the old one. :func:`rewrap_paths` walks sealed files and, for
every envelope whose DEK is wrapped under an older version of the KEK, unwraps the DEK
through the KMS (``aad = dek_wrap_aad(region, producer)``), wraps it under the primary
version, checks that the new wrapped key unwraps to the same DEK, and replaces the
envelope's key block with ``envelope.rewrap_envelope`` / ``rewrap_header``. Every payload
byte stays as it was. Each distinct DEK is unwrapped and wrapped once per run.

Files it understands: *record files*, one base64 envelope per line (what ``sealbeam seal``
writes, records or a batch), and *batch files* (``*.sbatch``, one raw envelope, any size:
only the header prefix is read into memory, the body is copied). A file is rewritten
atomically (temporary file in the same directory, fsync, rename, directory fsync) or not at
all. A journal (JSON lines) lists the files completed for this KEK and target version, so an
interrupted run can be repeated: journaled files are skipped, and a file whose envelopes are
all under the target version already is left untouched.

What it does not: it does not rotate or destroy KEKs (``keybroker.shred``), does not open
payloads (so it does not prove them authentic), never touches envelopes under other KEKs,
and never writes a DEK anywhere. Finding files, the journal and atomic replacement live in
``keybroker.rewrap_files``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from envelope import (
    MAX_HEADER_LENGTH,
    DataKey,
    EnvelopeError,
    WrappedKey,
    dek_wrap_aad,
    read_header,
    rewrap_envelope,
    rewrap_header,
)
from envelope.header import EnvelopeHeader
from keybroker.kms.base import KeyDestroyedError, KeyManagementService, KmsError
from keybroker.rewrap_files import (
    AtomicReplacement,
    RewrapError,
    RewrapJournal,
    find_sealed_files,
)

__all__ = [
    "BATCH_SUFFIX",
    "MAX_RECORD_LINE_BYTES",
    "RewrapError",
    "RewrapReport",
    "find_sealed_files",
    "rewrap_paths",
]

BATCH_SUFFIX = ".sbatch"
# A line holds one base64 envelope; sealed batches written as one line reach 64 MiB.
MAX_RECORD_LINE_BYTES = (64 << 20) * 4 // 3 + 8
_RAW_MAGIC = b"SBEV"
_BASE64_MAGIC = b"U0JFV"  # base64 of "SBEV" begins so
_PROBE_AAD = b"sealbeam/rewrap/primary-version-probe/v1"


class _FileFailure(Exception):
    """One file cannot be rewrapped; the message is the reason for the report."""


@dataclass
class RewrapReport:
    """What a run did, file by file (paths and counts only, never key bytes)."""

    kek_uri: str
    target_version: str
    files_changed: list[str] = field(default_factory=list)
    files_skipped: list[dict[str, str]] = field(default_factory=list)
    files_failed: list[dict[str, str]] = field(default_factory=list)
    envelopes_rewrapped: int = 0
    envelopes_skipped: int = 0
    data_keys: int = 0

    @property
    def ok(self) -> bool:
        return not self.files_failed

    def to_json(self) -> dict[str, object]:
        return {
            "kek": self.kek_uri,
            "target_version": self.target_version,
            "files_changed": list(self.files_changed),
            "files_skipped": list(self.files_skipped),
            "files_failed": list(self.files_failed),
            "envelopes_rewrapped": self.envelopes_rewrapped,
            "envelopes_skipped": self.envelopes_skipped,
            "data_keys": self.data_keys,
        }


@dataclass
class _FileOutcome:
    rewrapped: int = 0
    skipped: int = 0


class _KeyCache:
    """One unwrap + wrap + check per distinct (wrapped DEK, region, producer) in a run."""

    def __init__(self, kms: KeyManagementService, kek_uri: str, target_version: str) -> None:
        self._kms = kms
        self._kek_uri = kek_uri
        self._target = target_version
        self._entries: dict[tuple[str, str, str], tuple[DataKey, WrappedKey]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def rewrap_keys(self, header: EnvelopeHeader) -> tuple[DataKey, WrappedKey]:
        cache_key = (header.wrapped_key.key_id, header.region, header.producer_id)
        cached = self._entries.get(cache_key)
        if cached is None:
            cached = self._unwrap_and_wrap(header)
            self._entries[cache_key] = cached
        return cached

    def _unwrap_and_wrap(self, header: EnvelopeHeader) -> tuple[DataKey, WrappedKey]:
        aad = dek_wrap_aad(header.region, header.producer_id)
        old = header.wrapped_key.kek
        try:
            secret = self._kms.unwrap(header.wrapped_key, aad)
        except KeyDestroyedError as error:
            raise _FileFailure(
                f"key destroyed: KEK {old.uri} version {old.version}: {error}"
            ) from None
        except KmsError as error:
            raise _FileFailure(
                f"cannot unwrap a data key: {type(error).__name__}: {error}"
            ) from None
        try:
            data_key = DataKey(secret)
        except EnvelopeError as error:
            raise _FileFailure(f"the KMS returned an unusable data key: {error}") from None
        try:
            wrapped = self._kms.wrap(self._kek_uri, secret, aad)
            again = self._kms.unwrap(wrapped, aad)
        except KmsError as error:
            raise _FileFailure(f"cannot wrap under the new version: {type(error).__name__}: "
                               f"{error}") from None
        if not hmac.compare_digest(again, secret):
            raise _FileFailure("the new wrapped key does not unwrap to the same data key")
        if wrapped.kek.uri != self._kek_uri or wrapped.kek.version != self._target:
            raise _FileFailure(
                f"the KMS wrapped under {wrapped.kek.uri} version {wrapped.kek.version}, "
                f"not version {self._target}: is that version the primary?"
            )
        return data_key, wrapped


def rewrap_paths(
    paths: Iterable[Path],
    *,
    kms: KeyManagementService,
    kek_uri: str,
    journal_path: Path,
    target_version: str | None = None,
    on_file_done: Callable[[Path], None] | None = None,
) -> RewrapReport:
    """Rewrap every envelope under an older version of ``kek_uri`` in the files under ``paths``.

    ``target_version`` defaults to the KEK's primary version; when given it must be the
    primary (a KMS wraps only under its primary). Per-file problems are reported, not
    raised; anything else (a crash) propagates, and the journal lets a rerun resume.
    """
    primary = primary_version_of(kms, kek_uri)
    if target_version is not None and target_version != primary:
        raise RewrapError(
            f"version {target_version} is not the primary version of {kek_uri} (the primary is "
            f"{primary}); a KMS wraps only under its primary: rotate first"
        )
    target = primary
    report = RewrapReport(kek_uri=kek_uri, target_version=target)
    journal = RewrapJournal(journal_path, kek_uri, target)
    keys = _KeyCache(kms, kek_uri, target)
    def skipped(file: Path, reason: str) -> None:
        report.files_skipped.append({"path": str(file), "reason": reason})

    for file in find_sealed_files(paths, exclude=[journal_path], on_skipped=skipped):
        if file in journal:
            report.files_skipped.append({"path": str(file), "reason": "done in an earlier run"})
            continue
        try:
            outcome = _rewrap_file(file, keys, kek_uri, target)
        except _FileFailure as failure:
            report.files_failed.append({"path": str(file), "reason": str(failure)})
            continue
        except OSError as error:
            report.files_failed.append(
                {"path": str(file), "reason": f"I/O error: {error.strerror or error}"}
            )
            continue
        if outcome is None:
            report.files_skipped.append({"path": str(file), "reason": "not a sealed file"})
            continue
        report.envelopes_rewrapped += outcome.rewrapped
        report.envelopes_skipped += outcome.skipped
        if outcome.rewrapped:
            report.files_changed.append(str(file))
            journal.record(file, "changed")
        else:
            report.files_skipped.append(
                {"path": str(file), "reason": f"nothing under an older version of {kek_uri}"}
            )
            journal.record(file, "unchanged")
        if on_file_done is not None:
            on_file_done(file)
    report.data_keys = len(keys)
    return report


def primary_version_of(kms: KeyManagementService, kek_uri: str) -> str:
    """The KEK's primary version: asked of the backend, or read off a probe wrap."""
    primary_version = getattr(kms, "primary_version", None)
    if callable(primary_version):
        return str(primary_version(kek_uri))
    probe = kms.wrap(kek_uri, secrets.token_bytes(32), _PROBE_AAD)
    return probe.kek.version


def _rewrap_file(
    file: Path, keys: _KeyCache, kek_uri: str, target: str
) -> _FileOutcome | None:
    with file.open("rb") as source:
        start = source.read(len(_BASE64_MAGIC))
        source.seek(0)
        if start.startswith(_RAW_MAGIC):
            return _rewrap_batch_file(file, source, keys, kek_uri, target)
        if start == _BASE64_MAGIC:
            return _rewrap_record_file(file, source, keys, kek_uri, target)
    if file.suffix == BATCH_SUFFIX:
        raise _FileFailure("not a sealed envelope (bad magic)")
    return None


def _needs_rewrap(header: EnvelopeHeader, kek_uri: str, target: str) -> bool:
    kek = header.wrapped_key.kek
    return kek.uri == kek_uri and kek.version != target


def _rewrap_batch_file(
    file: Path, source: BinaryIO, keys: _KeyCache, kek_uri: str, target: str
) -> _FileOutcome:
    prefix = source.read(MAX_HEADER_LENGTH)
    try:
        header, _ = read_header(prefix)
    except EnvelopeError as error:
        raise _FileFailure(f"not a sealed envelope: {error}") from None
    if not _needs_rewrap(header, kek_uri, target):
        return _FileOutcome(skipped=1)
    data_key, wrapped = keys.rewrap_keys(header)
    try:
        new_header, old_length = rewrap_header(prefix, data_key, wrapped)
    except EnvelopeError as error:
        raise _FileFailure(f"cannot rewrap: {error}") from None
    with AtomicReplacement(file) as replacement:
        replacement.handle.write(new_header)
        source.seek(old_length)
        shutil.copyfileobj(source, replacement.handle, 1 << 20)
        replacement.commit()
    return _FileOutcome(rewrapped=1)


def _rewrap_record_file(
    file: Path, source: BinaryIO, keys: _KeyCache, kek_uri: str, target: str
) -> _FileOutcome:
    """Stream the lines into a replacement; keep it only if an envelope was rewrapped."""
    outcome = _FileOutcome()
    with AtomicReplacement(file) as replacement:
        for number, line in enumerate(_bounded_lines(source), start=1):
            replacement.handle.write(_rewrapped_line(number, line, keys, kek_uri, target,
                                                     outcome))
        if outcome.rewrapped:
            replacement.commit()
    return outcome


def _rewrapped_line(
    number: int, line: bytes, keys: _KeyCache, kek_uri: str, target: str, outcome: _FileOutcome
) -> bytes:
    body = line.rstrip(b"\r\n")
    if not body.strip():
        return line
    try:
        envelope = base64.b64decode(body, validate=True)
        header, _ = read_header(envelope)
    except (binascii.Error, ValueError, EnvelopeError) as error:
        raise _FileFailure(f"line {number}: not a base64 sealed envelope: {error}") from None
    if not _needs_rewrap(header, kek_uri, target):
        outcome.skipped += 1
        return line
    data_key, wrapped = keys.rewrap_keys(header)
    try:
        rewrapped = rewrap_envelope(envelope, data_key, wrapped)
    except EnvelopeError as error:
        raise _FileFailure(f"line {number}: cannot rewrap: {error}") from None
    outcome.rewrapped += 1
    return base64.b64encode(rewrapped) + line[len(body) :]


def _bounded_lines(source: BinaryIO) -> Iterator[bytes]:
    number = 0
    while True:
        line = source.readline(MAX_RECORD_LINE_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_RECORD_LINE_BYTES:
            raise _FileFailure(f"line {number} is longer than {MAX_RECORD_LINE_BYTES} bytes")
        yield line
