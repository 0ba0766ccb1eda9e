"""The run's custody statement, and the check that nothing was lost between inputs and outputs.

What it does: ``write_run_statement`` writes ``<output_root>/custody-run.intoto.json`` at the
end of a batch run, and of a streaming run once its feed ended and the pipeline finished:
an in-toto Statement v1 (predicate type ``https://sealbeam.dev/custody-run/v1``) whose
subjects are every output, every output's signed statement, every dead-letter file and every
late file (``late/``, streaming), by SHA-256, and whose predicate names how the run was fed
(``source``: ``batch``, ``files`` for a file-drop feed, ``pubsub`` with its subscription,
``test``), the input files by digest (a batch run's ``--input`` matches; the files a
file-drop feed read; none for Pub/Sub or a test stream), the run's counts (``late`` among
them: 0 in a batch run, absent from statements written before it and read as 0), spec
fingerprint and signed ledger head. It is an index and is not signed (no key outside the TEE
could vouch for it): ``verify_run`` recomputes every claim in it from the files and from the
signed per-output statements:

- every file it names is there with its digest, and every output, dead-letter and late file
  in the run directory is named (nothing added or swapped);
- every output verifies (``custody.verify_output``);
- **nothing lost**: the distinct envelope ids of the input files equal the union of the
  outputs' signed input ids, the dead letters' record ids and the late records' ids, no
  input is claimed twice (a streaming run may put a record stream's pieces into several
  windows' outputs), a late record is in no output or dead letter, and
  ``input records = outputs' records + dead-letter records + late records + duplicates``
  (a line that is not an envelope counts against the dead letters that are not named by an
  envelope id). Records are what the run counts: a v1 record or a batch envelope is one, a
  record stream (profile 2) the count its header commits to; a statement's
  ``counts.records_in`` says how many records an output accounts for (its ``inputs.count``
  when absent). A stream some of whose records failed or came late is in an output and in a
  dead letter or late line named ``<envelope id>#<indices>``.

Dead-letter and late files are read by ``custody_set_aside`` (the names they give whole
inputs and a stream's records).

A run that names no input files (Pub/Sub, a test stream, or a file drop that read more files
than its metric could name) is checked against the files the auditor passes (``inputs``,
``--input``: the partner's published files); without them the verdict says they are needed.
For Pub/Sub, redeliveries (the same message id, counted by the run as records in and as
duplicates) may make both stated counts exceed the files' by the same amount.

What it does not: it cannot check an output whose statement lists only a Merkle root (over
``MAX_LISTED_INPUTS`` inputs); such a run is refused with that reason. It cannot tell which
of a stream's records an output holds (statements list envelope ids): a stream's records are
checked by count.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

from enclave_workers.provenance import STATEMENT_TYPE
from envelope import (
    KIND_RECORD_STREAM,
    STREAM_RECORD_MARK,
    EnvelopeError,
    EnvelopeHeader,
    read_header,
)
from keybroker.identity import BrokerPublicKey, canonical_json
from transforms.dead_letters import DEAD_LETTER_DIR
from transforms.late_output import LATE_DIR
from transforms.write import STATEMENT_SUFFIX, commit_file

from .custody import CustodyError, CustodyPolicy, CustodyVerdict, load_statement, verify_output
from .custody_set_aside import read_dead_letters, read_late_records

__all__ = ["RUN_PREDICATE_TYPE", "RUN_STATEMENT_NAME", "SOURCES", "SOURCE_BATCH",
           "SOURCE_FILES", "SOURCE_PUBSUB", "SOURCE_TEST", "RunVerdict", "run_statement",
           "verify_run", "write_run_statement"]

RUN_STATEMENT_NAME = "custody-run.intoto.json"
RUN_PREDICATE_TYPE = "https://sealbeam.dev/custody-run/v1"
MAX_RUN_STATEMENT_BYTES = 256 << 20
_RUN_COUNTS = ("records_in", "records_out", "dead_letters", "duplicates", "late", "rows_out",
               "rows_suppressed", "dead_letter_rows")
SOURCE_BATCH = "batch"        # a batch run: the files --input matched
SOURCE_FILES = "files"        # a streaming file-drop feed: the files it read
SOURCE_PUBSUB = "pubsub"      # a streaming Pub/Sub feed: no input files
SOURCE_TEST = "test"          # a streaming run on a PTransform source (a TestStream)
SOURCES = (SOURCE_BATCH, SOURCE_FILES, SOURCE_PUBSUB, SOURCE_TEST)


def _sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with FileSystems.open(path, mime_type="application/octet-stream",
                          compression_type="uncompressed") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _matched(pattern: str) -> list[str]:
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except BeamIOError:
        return []


def _relative(root: str, path: str) -> str:
    return path[len(root):].lstrip("/\\") if path.startswith(root) else path


def run_statement(output_root: str, input_pattern: str | None, regions: Iterable[str],
                  summary: Mapping[str, Any], *, source: str = SOURCE_BATCH,
                  input_paths: Iterable[str] | None = None, input_files: int | None = None,
                  subscription: str | None = None) -> dict[str, Any]:
    """The run's statement (see the module docstring) from the files the run left.

    ``source``: how the run was fed (``SOURCES``). Its inputs are ``input_paths`` when given
    (a file-drop feed: the files it read), else the files ``input_pattern`` matches (a batch
    run), else none (Pub/Sub, a test stream). ``input_files``: how many files a file-drop
    feed read (stated, so a verifier sees when fewer are named); ``subscription``: the
    Pub/Sub subscription read.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
    root = output_root.rstrip("/")
    files = [path for region in sorted(regions)
             for path in _matched(FileSystems.join(root, region, "part-*"))]
    files += _matched(FileSystems.join(root, DEAD_LETTER_DIR, "*.jsonl"))
    files += _matched(FileSystems.join(root, LATE_DIR, "*.jsonl"))
    subjects = [{"name": _relative(root, path), "digest": {"sha256": _sha256_of(path)}}
                for path in files]
    if input_paths is not None:
        paths = sorted(set(input_paths))
    elif input_pattern and source == SOURCE_BATCH:
        paths = _matched(input_pattern)
    else:
        paths = []
    inputs = [{"name": path, "digest": {"sha256": _sha256_of(path)}} for path in paths]
    predicate: dict[str, Any] = {
        "source": source,
        "inputs": inputs,
        "counts": {name: int(summary.get(name, 0) or 0) for name in _RUN_COUNTS},
        "spec_fingerprint": summary.get("spec_fingerprint", ""),
        "output_format": summary.get("output_format", ""),
        "regions": sorted(regions),
        "ledger_head": summary.get("ledger_head"),
    }
    if source == SOURCE_FILES:
        predicate["input_files"] = int(input_files if input_files is not None else len(inputs))
    if source == SOURCE_PUBSUB:
        predicate["subscription"] = subscription or ""
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": RUN_PREDICATE_TYPE,
        "predicate": predicate,
    }


def write_run_statement(output_root: str, input_pattern: str | None, regions: Iterable[str],
                        summary: Mapping[str, Any], **source: Any) -> str:
    """Write ``custody-run.intoto.json`` into ``output_root``; returns its path.
    ``source``: ``run_statement``'s keywords (a streaming run's feed)."""
    statement = run_statement(output_root, input_pattern, regions, summary, **source)
    return commit_file(output_root, RUN_STATEMENT_NAME, [canonical_json(statement)],
                       "application/json")


@dataclass
class RunVerdict:
    """The outcome of ``verify_run``: reasons (empty when everything holds), and what it saw."""

    run: str
    reasons: list[str] = field(default_factory=list)
    outputs: list[CustodyVerdict] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.reasons and all(v.ok for v in self.outputs)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "run": self.run, "reasons": self.reasons, "facts": self.facts,
                "outputs": [v.to_json() for v in self.outputs]}


def _load_run_statement(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_STATEMENT_NAME
    try:
        with path.open("rb") as handle:
            content = handle.read(MAX_RUN_STATEMENT_BYTES + 1)
        document = json.loads(content)
    except OSError as error:
        raise CustodyError(f"cannot read {RUN_STATEMENT_NAME}: {error.strerror}") from None
    except (ValueError, UnicodeDecodeError):
        raise CustodyError(f"{RUN_STATEMENT_NAME} is not JSON") from None
    if not isinstance(document, dict) or document.get("_type") != STATEMENT_TYPE or \
            document.get("predicateType") != RUN_PREDICATE_TYPE or \
            not isinstance(document.get("predicate"), dict) or \
            not isinstance(document.get("subject"), list):
        raise CustodyError(f"{RUN_STATEMENT_NAME} is not a sealbeam run statement")
    return document


def verify_run(run_dir: Path, *, broker_key: BrokerPublicKey, policy: CustodyPolicy | None = None,
               anchors: Iterable[object] = (), inputs: Iterable[Path] | None = None,
               ledger: Any = None) -> RunVerdict:
    """Check a run directory: files named and unchanged, every output verified, nothing lost.

    ``inputs``: the run's input files (default: those the run statement names, which must
    still have their digests). A streaming run fed by Pub/Sub or a test stream names none:
    the partner's published files must be given, or the verdict says they are missing.
    """
    run_dir = Path(run_dir)
    verdict = RunVerdict(str(run_dir))
    document = _load_run_statement(run_dir)
    predicate = document["predicate"]
    source = str(predicate.get("source", SOURCE_BATCH))
    anchors = list(anchors)
    outputs, dead_letter_files, late_files = _check_subjects(
        verdict, run_dir, document["subject"], predicate.get("regions") or [])
    claims: dict[str, list[str]] = {}
    envelopes_out = 0
    for output in outputs:
        result = verify_output(output, broker_key=broker_key, policy=policy, anchors=anchors,
                               ledger=ledger)
        verdict.outputs.append(result)
        if not result.ok:
            verdict.reasons.append(f"output {output.name} does not verify: "
                                   f"{'; '.join(result.reasons)}")
            continue
        ids, count = _signed_input_ids(output)
        envelopes_out += _signed_records(output, count)
        if ids is None:
            verdict.reasons.append(f"output {output.name} lists only a Merkle root of its "
                                   f"inputs: coverage cannot be checked")
            continue
        for envelope_id in ids:
            claims.setdefault(envelope_id, []).append(output.name)
    dead = read_dead_letters(dead_letter_files)
    late = read_late_records(late_files)
    verdict.reasons.extend(late.reasons)
    for envelope_id in sorted(dead.ids & set(claims)):
        verdict.reasons.append(f"input {envelope_id} is both in {claims[envelope_id][0]} and a "
                               "dead letter")
    for envelope_id in sorted(late.ids & set(claims)):
        verdict.reasons.append(f"late record {envelope_id} is also in output "
                               f"{claims[envelope_id][0]}")
    for envelope_id in sorted(late.ids & dead.ids):
        verdict.reasons.append(f"late record {envelope_id} is also a dead letter")
    for envelope_id in sorted(set(late.pieces) & set(dead.pieces)):
        both = late.pieces[envelope_id] & dead.pieces[envelope_id]
        if both:
            verdict.reasons.append(f"record {_record_name(envelope_id, min(both))} is both "
                                   "late and a dead letter")
    verdict.facts = {"source": source, "outputs": len(outputs),
                     "envelopes_out": envelopes_out, "dead_letter_files": len(dead_letter_files),
                     "dead_letter_records": dead.records, "late_files": len(late_files),
                     "late_records": late.records}
    input_paths = _input_paths(verdict, predicate, source, inputs)
    if input_paths is None:
        return verdict
    lines, input_ids, not_envelopes, streams = _input_envelopes(input_paths)
    for envelope_id, names in sorted(claims.items()):
        # A streaming run splits a stream whose records fall into several windows into one
        # piece per window, each in its window's output; anything else is claimed once.
        if len(names) > 1 and not (source != SOURCE_BATCH and envelope_id in streams):
            verdict.reasons.append(f"input {envelope_id} is claimed by both {names[0]} and "
                                   f"{names[1]}")
    distinct = dict(input_ids)
    duplicates = sum(records for _, records in input_ids) - sum(distinct.values())
    for envelope_id, indices in sorted(late.pieces.items()):
        if envelope_id not in streams:
            verdict.reasons.append(f"late record {_record_name(envelope_id, min(indices))} "
                                   "names no record stream among the inputs")
        elif max(indices) >= distinct[envelope_id]:
            verdict.reasons.append(f"late record {_record_name(envelope_id, max(indices))} is "
                                   f"beyond its stream's {distinct[envelope_id]} records")
    covered = set(claims) | dead.ids | set(dead.pieces) | late.ids | set(late.pieces)
    missing = sorted(set(distinct) - covered)
    extra = sorted(covered - set(distinct))
    if missing:
        verdict.reasons.append(f"{len(missing)} input envelope(s) are in no output statement "
                               f"and no dead letter or late file (first: {missing[0]})")
    if extra:
        verdict.reasons.append(f"{len(extra)} envelope(s) in the outputs, dead letters or late "
                               f"files are not among the inputs (first: {extra[0]})")
    if not_envelopes != dead.unnamed:
        verdict.reasons.append(f"{not_envelopes} input line(s) are not envelopes but "
                               f"{dead.unnamed} dead letter(s) stand for such lines")
    if lines != envelopes_out + dead.records + late.records + duplicates:
        verdict.reasons.append(f"input records {lines} != outputs' records {envelopes_out} + "
                               f"dead-letter records {dead.records} + late records "
                               f"{late.records} + duplicates {duplicates}")
    stated = predicate.get("counts") or {}
    redelivered = _redelivered(source, stated, lines, duplicates)
    for name, value in (("records_in", lines + redelivered),
                        ("duplicates", duplicates + redelivered),
                        ("dead_letters", dead.records), ("records_out", envelopes_out),
                        ("late", late.records)):
        # Batch statements before late records were counted have no "late": 0 then.
        said = stated.get(name, 0) if name == "late" else stated.get(name)
        if said != value:
            verdict.reasons.append(f"the run statement says {name}={said}, the files give "
                                   f"{value}")
    verdict.facts.update({"input_lines": len(input_ids) + not_envelopes, "input_records": lines,
                          "distinct_envelopes": len(distinct), "duplicates": duplicates,
                          "redelivered": redelivered})
    return verdict


def _redelivered(source: str, stated: Mapping[str, Any], lines: int, duplicates: int) -> int:
    """Pub/Sub deliveries of a message already delivered (same message id), which the run
    counted in ``records_in`` and ``duplicates`` and the published files do not hold: the
    amount by which both stated counts exceed the files', when they exceed them equally."""
    records_in, stated_duplicates = stated.get("records_in"), stated.get("duplicates")
    if source != SOURCE_PUBSUB or not isinstance(records_in, int) or \
            not isinstance(stated_duplicates, int):
        return 0
    extra = records_in - lines
    return extra if extra > 0 and stated_duplicates - duplicates == extra else 0


def _input_paths(verdict: RunVerdict, predicate: Mapping[str, Any], source: str,
                 inputs: Iterable[Path] | None) -> list[Path] | None:
    """The input files to check against: the auditor's, else the statement's; ``None`` (with
    the reason) when the statement names none or only some and none were given."""
    if inputs is not None:
        return list(inputs)
    if source == SOURCE_PUBSUB:
        verdict.reasons.append(f"the run read Pub/Sub subscription "
                               f"{predicate.get('subscription') or '(unnamed)'}: it names no "
                               "input files; pass the partner's published files with --input")
        return None
    if source == SOURCE_TEST:
        verdict.reasons.append("the run read a test stream: it names no input files; pass "
                               "the files it was fed with --input")
        return None
    if source == SOURCE_FILES:
        named = len(predicate.get("inputs") or [])
        read = predicate.get("input_files")
        if read != named:
            verdict.reasons.append(f"the run read {read} file(s) but its statement names "
                                   f"{named}; pass the files it read with --input")
            return None
    elif source != SOURCE_BATCH:
        verdict.reasons.append(f"the run statement's source {source!r} is not one of "
                               f"{', '.join(SOURCES)}")
        return None
    return _stated_inputs(verdict, predicate)


def _check_subjects(verdict: RunVerdict, run_dir: Path, subjects: list[Any],
                    regions: list[str]) -> tuple[list[Path], list[Path], list[Path]]:
    """Outputs, dead-letter files and late files the statement names, each checked against
    its digest; files in the run directory that it does not name are reasons."""
    named: set[Path] = set()
    outputs: list[Path] = []
    dead: list[Path] = []
    late: list[Path] = []
    for subject in subjects:
        name = str(subject.get("name", "")) if isinstance(subject, dict) else ""
        path = (run_dir / name).resolve()
        if not name or run_dir.resolve() not in path.parents:
            verdict.reasons.append(f"the run statement names a file outside the run: {name!r}")
            continue
        named.add(path)
        try:
            actual = _sha256_of(str(path))
        except (OSError, BeamIOError):
            verdict.reasons.append(f"{name} is named in the run statement but missing")
            continue
        if actual != str((subject.get("digest") or {}).get("sha256", "")):
            verdict.reasons.append(f"{name} differs from the run statement's digest")
        if path.parent.name == DEAD_LETTER_DIR:
            dead.append(path)
        elif path.parent.name == LATE_DIR:
            late.append(path)
        elif not name.endswith(STATEMENT_SUFFIX):
            outputs.append(path)
    present = [p for region in regions for p in (run_dir / region).glob("part-*")]
    present += list((run_dir / DEAD_LETTER_DIR).glob("*.jsonl"))
    present += list((run_dir / LATE_DIR).glob("*.jsonl"))
    for path in sorted(present):
        if path.resolve() not in named:
            verdict.reasons.append(f"{path.relative_to(run_dir)} is not named in the run "
                                   "statement")
    return sorted(outputs), sorted(dead), sorted(late)


def _signed_input_ids(output: Path) -> tuple[list[str] | None, int]:
    """The input ids and count of an output whose statement already verified."""
    _, _, statement = load_statement(output.with_name(output.name + STATEMENT_SUFFIX))
    inputs = statement["predicate"]["inputs"]
    return inputs.get("envelope_ids"), int(inputs["count"])


def _signed_records(output: Path, count: int) -> int:
    """The records an output accounts for: its statement's ``counts.records_in``, else its
    input count (statements before record streams)."""
    _, _, statement = load_statement(output.with_name(output.name + STATEMENT_SUFFIX))
    records = (statement["predicate"].get("counts") or {}).get("records_in")
    return int(records) if isinstance(records, int) else count


def _record_name(stream_id: str, index: int) -> str:
    """One record of a stream, named as dead letters and late lines name it."""
    return f"{stream_id}{STREAM_RECORD_MARK}{index}"


def _line_records(header: EnvelopeHeader) -> int:
    """Records one envelope stands for: a record stream's committed count, else 1."""
    return header.record_count or 1 if header.kind == KIND_RECORD_STREAM else 1


def _stated_inputs(verdict: RunVerdict, predicate: Mapping[str, Any]) -> list[Path]:
    paths: list[Path] = []
    for entry in predicate.get("inputs") or []:
        path = Path(str(entry.get("name", "")))
        try:
            actual = _sha256_of(str(path))
        except (OSError, BeamIOError):
            verdict.reasons.append(f"input {path.name} named in the run statement is missing "
                                   "(pass the inputs with --input)")
            continue
        if actual != str((entry.get("digest") or {}).get("sha256", "")):
            verdict.reasons.append(f"input {path.name} differs from the run statement's digest")
        paths.append(path)
    return paths


def _input_envelopes(paths: Iterable[Path]) -> tuple[int, list[tuple[str, int]], int, set[str]]:
    """(records of the non-blank lines, (envelope id, records) per line that is an envelope,
    lines that are not, ids of the record streams); a line is one record unless it is a
    record stream."""
    lines = 0
    ids: list[tuple[str, int]] = []
    others = 0
    streams: set[str] = set()
    for path in paths:
        with Path(path).open("rb") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    header, _ = read_header(base64.b64decode(line.strip(), validate=True))
                except (binascii.Error, ValueError, EnvelopeError):
                    lines += 1
                    others += 1
                    continue
                records = _line_records(header)
                lines += records
                ids.append((header.envelope_id.hex(), records))
                if header.kind == KIND_RECORD_STREAM:
                    streams.add(header.envelope_id.hex())
    return lines, ids, others, streams
