"""Benchmark: sealing and opening sealbeam envelopes (records, batches, an Arrow table), and
the peak extra memory of streaming versus whole-buffer batch sealing and opening.

What it does, on one thread (Arrow pinned to one CPU thread):

- records (100 B, 200 B, 1 KiB, 16 KiB payloads): records/s and µs per record of
  ``seal_record`` / ``open_record`` (one call per record), of the batch calls
  ``seal_records`` / ``open_records`` (all the run's records under one DEK in one call, from
  bytes and from ``ParsedEnvelope``s) and of ``parse_envelope``; of what the confidential step
  does with v1 records (``RecordSorter``, one header parse each, then one
  ``RecordOpener.open_group`` call per header) and what routing outside the TEE reads
  (``peek_record``); and of **record profile 2**
  (docs/FORMAT.md section 13): ``seal_record_stream`` / ``open_record_stream`` /
  ``read_record_stream`` over the same records in streams of 1,000 (``STREAM_RECORDS``), with
  the bytes a record costs beside its payload in a stream (``stream_overhead_per_record``);
- batches (1, 64, 256 MiB x segments of 64 KiB, 1 MiB, 4 MiB): MiB/s of ``seal_batch``
  (envelope in memory), ``BatchSealer`` writing to a file object, ``iter_open_batch`` (segment
  by segment, each dropped after use), ``open_batch`` (whole plaintext) and
  ``open_batch_into`` (whole plaintext decrypted in place into ``pa.allocate_buffer``), each
  also as a fraction of **raw AES-GCM**: bare ``AESGCM.decrypt`` of the same bytes in the
  same segment size;
- memory, at the largest batch size: the peak memory each of those five adds on top of its
  input, seen by ``tracemalloc`` in this process and as the peak RSS growth of a fresh
  subprocess that loads its input first (Linux VmHWM, reset just before the run; ``ru_maxrss``
  where that is unavailable); streaming should hold a segment or two, the whole-buffer calls
  about two batches (``open_batch_into``'s output is in Arrow's pool, which tracemalloc
  does not see);
- Arrow: a 1,000,000-row table written to an IPC stream, sealed, opened into an Arrow buffer
  and read back with ``pa.ipc.open_stream``; rows/s end to end.

Every timing is the median and the minimum of ``--repeat`` runs after one warm-up run, and
every case checks its round trip before it is timed. ``--json PATH`` also writes the numbers;
``--only SECTION`` runs some sections; ``--clock cpu`` times this process's CPU time instead
of the wall clock (the per-core cost on a machine busy with other work).

What it does not: no KMS, no key release (``benchmarks/key_transport.py``), no network; the
file sink is an ordinary temporary file, so its figure includes the page-cache write.

    .venv/bin/python benchmarks/envelope.py [--quick] [--repeat 5] [--only records ...]
        [--clock wall|cpu] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import hmac
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import cryptography
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# The repository root goes first so that ``import envelope`` finds the package, not this file.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envelope import (
    DEFAULT_SEGMENT_SIZE,
    BatchSealer,
    DataKey,
    KeyReference,
    RecordOpener,
    RecordSorter,
    WrappedKey,
    iter_open_batch,
    open_batch,
    open_batch_into,
    open_record,
    open_record_stream,
    open_records,
    parse_envelope,
    peek_record,
    read_record_stream,
    seal_batch,
    seal_record,
    seal_record_stream,
    seal_records,
)

KIB = 1 << 10
MIB = 1 << 20
DATA_KEY = DataKey.generate()
SEAL_ARGUMENTS: dict[str, object] = {
    "data_key": DATA_KEY,
    "wrapped_key": WrappedKey(KeyReference("local://keyring/eu/kek-1", "1"), os.urandom(60)),
    "region": "eu",
    "producer_id": "acme",
    "schema_fingerprint": hashlib.sha256(b"benchmark schema").digest(),
    "context": {"dataset": "payments", "purpose": "featurize"},
}
FULL = {
    "record_sizes": [100, 200, KIB, 16 * KIB],
    "records_per_run": 10_000,
    "batch_sizes": [MIB, 64 * MIB, 256 * MIB],
    "segment_sizes": [64 * KIB, MIB, 4 * MIB],
    "arrow_rows": 1_000_000,
}
QUICK = {
    "record_sizes": [100, 200, KIB, 16 * KIB],
    "records_per_run": 200,
    "batch_sizes": [256 * KIB, MIB],
    "segment_sizes": [16 * KIB, 64 * KIB],
    "arrow_rows": 10_000,
}
BATCH_OPERATIONS = ("seal_batch", "BatchSealer->file", "iter_open_batch", "open_batch",
                    "open_batch_into")
RAW = "raw AES-GCM"  # the reference: bare AESGCM.decrypt of the same bytes, same segment size
SECTIONS = ("records", "arrow", "batches", "memory")
STREAM_RECORDS = 1_000  # records a record stream holds in the stream rows (the last may hold fewer)


class BenchmarkCheckError(Exception):
    """A round trip did not give back what went in: the numbers would be meaningless."""


# What timed_runs measures: wall time, or (``--clock cpu``) this process's CPU time, which
# is the per-core cost even while other work shares the machine's cores.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def timed_runs(repeat: int, run: Callable[[], object]) -> dict[str, float]:
    """Median and minimum seconds of ``repeat`` runs, after one untimed warm-up run."""
    run()
    seconds = []
    for _ in range(repeat):
        start = clock()
        run()
        seconds.append(clock() - start)
    return {"median_seconds": statistics.median(seconds), "min_seconds": min(seconds)}


def require_equal(what: str, expected: bytes, actual: bytes) -> None:
    if not hmac.compare_digest(hashlib.sha256(expected).digest(), hashlib.sha256(actual).digest()):
        raise BenchmarkCheckError(f"{what}: round trip changed the bytes")


# -- records -------------------------------------------------------------------------------


def bench_records(sizes: list[int], count: int, repeat: int) -> list[dict[str, float]]:
    results = []
    for size in sizes:
        payload = os.urandom(size)
        sealed = seal_record(payload, **SEAL_ARGUMENTS)
        require_equal(f"record {size} B", payload, open_record(sealed, DATA_KEY))

        def seal_all(payload: bytes = payload) -> None:
            for _ in range(count):
                seal_record(payload, **SEAL_ARGUMENTS)

        def open_all(sealed: bytes = sealed) -> None:
            for _ in range(count):
                open_record(sealed, DATA_KEY)

        # The batch calls: ``count`` distinct records under one DEK in one call each, as a
        # worker gets them (one DEK per partner file); bytes in, and parsed-once in.
        payloads = [os.urandom(size) for _ in range(count)]
        many = seal_records(payloads, **SEAL_ARGUMENTS)
        parsed = [parse_envelope(envelope) for envelope in many]
        if open_records(many, DATA_KEY) != payloads or open_records(parsed,
                                                                    DATA_KEY) != payloads:
            raise BenchmarkCheckError(f"records {size} B: open_records changed the bytes")

        def seal_many(payloads: list[bytes] = payloads) -> None:
            seal_records(payloads, **SEAL_ARGUMENTS)

        def open_many(many: list[bytes] = many) -> None:
            open_records(many, DATA_KEY)

        def open_many_parsed(parsed: list = parsed) -> None:
            open_records(parsed, DATA_KEY)

        def parse_many(many: list[bytes] = many) -> None:
            for envelope in many:
                parse_envelope(envelope)

        # What the TEE does with v1 records: one header parse each (RecordSorter), then one
        # open_group call per header; and what routing outside the TEE reads (peek_record).
        if sort_and_open(many) != payloads:
            raise BenchmarkCheckError(f"records {size} B: sort + open_group changed the bytes")

        def sort_open_many(many: list[bytes] = many) -> None:
            sort_and_open(many)

        def peek_many(many: list[bytes] = many) -> None:
            for envelope in many:
                peek_record(envelope)

        # Record profile 2: the same payloads in streams of STREAM_RECORDS under one DEK.
        chunks = [payloads[i:i + STREAM_RECORDS] for i in range(0, count, STREAM_RECORDS)]
        streams = [seal_record_stream(chunk, **SEAL_ARGUMENTS) for chunk in chunks]
        for chunk, stream in zip(chunks, streams, strict=True):
            opened = open_record_stream(stream, DATA_KEY)
            if opened.failures or [r.plaintext for r in opened.records] != chunk:
                raise BenchmarkCheckError(f"records {size} B: open_record_stream changed bytes")

        def seal_streams(chunks: list[list[bytes]] = chunks) -> None:
            for chunk in chunks:
                seal_record_stream(chunk, **SEAL_ARGUMENTS)

        def open_streams(streams: list[bytes] = streams) -> None:
            for stream in streams:
                open_record_stream(stream, DATA_KEY)

        def read_streams(streams: list[bytes] = streams) -> None:
            for stream in streams:
                read_record_stream(stream)

        row: dict[str, float] = {
            "payload_bytes": size, "envelope_bytes": len(sealed), "records_per_run": count,
            "stream_records": len(chunks[0]),
            "stream_overhead_per_record": (len(streams[0]) - size * len(chunks[0]))
            / len(chunks[0]),
        }
        for name, run in (("seal", seal_all), ("open", open_all), ("seal_records", seal_many),
                          ("open_records", open_many), ("open_records_parsed", open_many_parsed),
                          ("parse_envelope", parse_many), ("sort_open", sort_open_many),
                          ("peek_record", peek_many), ("seal_record_stream", seal_streams),
                          ("open_record_stream", open_streams),
                          ("read_record_stream", read_streams)):
            timing = timed_runs(repeat, run)
            row[f"{name}_records_per_second"] = count / timing["median_seconds"]
            row[f"{name}_best_records_per_second"] = count / timing["min_seconds"]
            row[f"{name}_us_per_record"] = timing["median_seconds"] / count * 1e6
            row[f"{name}_min_us_per_record"] = timing["min_seconds"] / count * 1e6
        results.append(row)
    return results


def sort_and_open(envelopes: list[bytes]) -> list[bytes]:
    """``RecordSorter`` then ``RecordOpener.open_group`` per group (all under DATA_KEY here)."""
    sorter = RecordSorter()
    for envelope in envelopes:
        if not sorter.add(envelope):
            raise BenchmarkCheckError("the record sorter refused a sealed record")
    opener = RecordOpener(DATA_KEY)
    opened: list[bytes] = []
    for group in sorter.groups():
        for result in opener.open_group(group):
            if not isinstance(result, bytes):
                raise BenchmarkCheckError(f"open_group failed a record: {result}")
            opened.append(result)
    return opened


# -- batches -------------------------------------------------------------------------------


def seal_batch_in_memory(plaintext: bytes, segment_size: int) -> bytes:
    return seal_batch(plaintext, segment_size=segment_size, **SEAL_ARGUMENTS)


def seal_batch_to_file(plaintext: bytes, segment_size: int, path: Path) -> None:
    with path.open("wb") as sink:
        sealer = BatchSealer(segment_size=segment_size, sink=sink, **SEAL_ARGUMENTS)
        sealer.write(plaintext)
        sealer.finish()


def open_batch_streaming(envelope: bytes) -> int:
    """Consume the batch segment by segment, keeping none of it: the streaming reader's cost."""
    total = 0
    for segment in iter_open_batch(envelope, DATA_KEY):
        total += len(segment)
    return total


def open_batch_whole(envelope: bytes) -> int:
    return len(open_batch(envelope, DATA_KEY))


def open_batch_to_arrow_buffer(envelope: bytes) -> int:
    """The whole plaintext decrypted in place into an Arrow buffer (the worker's path)."""
    return open_batch_into(envelope, DATA_KEY, pa.allocate_buffer).size


def raw_aes_gcm_segments(plaintext: bytes, segment_size: int) -> Callable[[], int]:
    """The reference run: AESGCM.decrypt of each segment of ``plaintext`` under a bare key.

    The same bytes in the same segment size, but no header, commitment, frame walk or output
    assembly: each plaintext segment is dropped, like ``iter_open_batch``'s consumer.
    """
    cipher = AESGCM(AESGCM.generate_key(256))
    view = memoryview(plaintext)
    sealed = [(index.to_bytes(12, "big"),
               cipher.encrypt(index.to_bytes(12, "big"), view[offset:offset + segment_size], b""))
              for index, offset in enumerate(range(0, max(len(plaintext), 1), segment_size))]

    def run() -> int:
        total = 0
        for nonce, ciphertext in sealed:
            total += len(cipher.decrypt(nonce, ciphertext, b""))
        return total

    return run


def batch_operation(name: str, plaintext: bytes, envelope: bytes, segment_size: int,
                    path: Path) -> Callable[[], object]:
    """The zero-argument run for one of BATCH_OPERATIONS over prepared inputs."""
    if name == "seal_batch":
        return lambda: seal_batch_in_memory(plaintext, segment_size)
    if name == "BatchSealer->file":
        return lambda: seal_batch_to_file(plaintext, segment_size, path)
    if name == "iter_open_batch":
        return lambda: open_batch_streaming(envelope)
    if name == "open_batch":
        return lambda: open_batch_whole(envelope)
    if name == "open_batch_into":
        return lambda: open_batch_to_arrow_buffer(envelope)
    raise ValueError(f"unknown batch operation {name!r}")


def prepare_batch(size: int, segment_size: int, path: Path) -> tuple[bytes, bytes]:
    """Plaintext and its envelope, after checking every sealer against every opener."""
    plaintext = os.urandom(size)
    envelope = seal_batch_in_memory(plaintext, segment_size)
    seal_batch_to_file(plaintext, segment_size, path)
    from_file = path.read_bytes()
    what = f"batch {size} B / segment {segment_size} B"
    require_equal(what, plaintext, open_batch(envelope, DATA_KEY))
    require_equal(what, plaintext, b"".join(iter_open_batch(from_file, DATA_KEY)))
    if open_batch_streaming(envelope) != size:
        raise BenchmarkCheckError(f"{what}: iter_open_batch yielded a different length")
    require_equal(what, plaintext, open_batch_into(envelope, DATA_KEY, pa.allocate_buffer))
    return plaintext, envelope


def bench_batches(sizes: list[int], segment_sizes: list[int], repeat: int,
                  workdir: Path) -> list[dict[str, float | str]]:
    results: list[dict[str, float | str]] = []
    path = workdir / "batch.sbev"
    for size in sizes:
        for segment_size in segment_sizes:
            plaintext, envelope = prepare_batch(size, segment_size, path)
            raw = raw_aes_gcm_segments(plaintext, segment_size)
            if raw() != size:
                raise BenchmarkCheckError(f"raw AES-GCM of {size} B gave a different length")
            rows = []
            for name in (RAW, *BATCH_OPERATIONS):
                run = raw if name == RAW else batch_operation(name, plaintext, envelope,
                                                              segment_size, path)
                timing = timed_runs(repeat, run)
                rows.append({
                    "operation": name, "batch_bytes": size, "segment_size": segment_size,
                    **timing,
                    "mib_per_second": size / MIB / timing["median_seconds"],
                    "best_mib_per_second": size / MIB / timing["min_seconds"],
                })
            for row in rows:  # the goal is stated as a fraction of raw AES-GCM's speed
                row["fraction_of_raw"] = row["mib_per_second"] / rows[0]["mib_per_second"]
            results.extend(rows)
            del plaintext, envelope, raw
    return results


# -- memory --------------------------------------------------------------------------------


def tracemalloc_peak(run: Callable[[], object]) -> int:
    """Peak bytes Python allocated while ``run`` ran, above what was live when it started."""
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        run()
        return tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()


def write_envelope_in_chunks(size: int, segment_size: int, path: Path) -> None:
    """Seal ``size`` random bytes to ``path`` one segment at a time (never all in memory)."""
    with path.open("wb") as sink:
        sealer = BatchSealer(segment_size=segment_size, sink=sink, **SEAL_ARGUMENTS)
        for offset in range(0, size, segment_size):
            sealer.write(os.urandom(min(segment_size, size - offset)))
        sealer.finish()


def proc_status_kib(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux), or None where there is none."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return None


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return proc_status_kib("VmHWM") is not None


def memory_probe(operation: str, size: int, segment_size: int,
                 workdir: Path) -> dict[str, int | str]:
    """In a fresh process: load the input, then the peak RSS growth while ``operation`` runs.

    The probe makes its own input under its own random key (keys never cross processes),
    without a transient peak that would hide the operation's own: sealing starts from
    ``os.urandom(size)``, opening from an envelope sealed to a file segment by segment.
    The peak is VmHWM reset just before the run. Plain ``ru_maxrss`` is only the fallback:
    on Linux it carries the parent's peak across fork and exec, so under a parent that
    holds a large batch it reads 0.
    """
    envelope_path = workdir / f"probe-{os.getpid()}.sbev"
    if operation in ("seal_batch", "BatchSealer->file"):
        plaintext, envelope = os.urandom(size), b""
    else:
        write_envelope_in_chunks(size, segment_size, envelope_path)
        plaintext, envelope = b"", envelope_path.read_bytes()
    run = batch_operation(operation, plaintext, envelope, segment_size, envelope_path)
    gc.collect()
    if reset_peak_rss():
        method, before = "VmHWM after clear_refs", proc_status_kib("VmRSS") or 0
        run()
        after = proc_status_kib("VmHWM") or 0
    else:
        method = "ru_maxrss"
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    envelope_path.unlink(missing_ok=True)
    return {"peak_rss_delta_bytes": max(0, after - before) * KIB, "method": method}


def peak_rss_delta_in_subprocess(operation: str, size: int, segment_size: int,
                                 workdir: Path) -> dict[str, int | str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", operation,
               "--probe-size", str(size), "--probe-segment", str(segment_size),
               "--probe-workdir", str(workdir)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False,
                               timeout=600)
    if completed.returncode != 0:
        raise BenchmarkCheckError(f"memory probe {operation} failed: {completed.stderr.strip()}")
    probe = json.loads(completed.stdout)
    return {"peak_rss_delta_bytes": int(probe["peak_rss_delta_bytes"]),
            "method": str(probe["method"])}


def bench_memory(size: int, segment_sizes: list[int],
                 workdir: Path) -> list[dict[str, float | str]]:
    results: list[dict[str, float | str]] = []
    path = workdir / "memory.sbev"
    for segment_size in segment_sizes:
        plaintext, envelope = prepare_batch(size, segment_size, path)
        for name in BATCH_OPERATIONS:
            traced = tracemalloc_peak(
                batch_operation(name, plaintext, envelope, segment_size, path))
            probe = peak_rss_delta_in_subprocess(name, size, segment_size, workdir)
            results.append({
                "operation": name, "batch_bytes": size, "segment_size": segment_size,
                "tracemalloc_peak_bytes": traced,
                "subprocess_peak_rss_delta_bytes": probe["peak_rss_delta_bytes"],
                "subprocess_peak_rss_method": probe["method"],
                "tracemalloc_peak_in_segments": traced / segment_size,
                "tracemalloc_peak_in_batches": traced / size,
            })
        del plaintext, envelope
    return results


# -- Arrow ---------------------------------------------------------------------------------


def make_table(rows: int) -> pa.Table:
    """A payments-like table: ids, amounts, countries, timestamps, short notes."""
    index = pa.array(range(rows), pa.int64())
    return pa.table({
        "id": index,
        "amount": pc.divide(pc.cast(pc.bit_wise_and(pc.multiply(index, 2654435761), 0xFFFFF),
                                    pa.float64()), 100.0),
        "country": pc.take(pa.array(["DE", "FR", "US", "GB"]), pc.bit_wise_and(index, 3)),
        "event_time": pc.cast(pc.add(pc.multiply(index, 1_000_000), 1_704_067_200_000_000),
                              pa.timestamp("us", tz="UTC")),
        "note": pc.take(pa.array(["paid in full", "refund", "", "two words"]),
                        pc.bit_wise_and(pc.shift_right(index, 2), 3)),
    })


def table_to_ipc(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def arrow_round_trip(table: pa.Table) -> tuple[pa.Table, dict[str, float], int, int]:
    """Serialize, seal, open, read back; the seconds each stage took."""
    stages: dict[str, float] = {}
    start = time.perf_counter()
    ipc = table_to_ipc(table)
    stages["serialize_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    envelope = seal_batch(memoryview(ipc), segment_size=DEFAULT_SEGMENT_SIZE, **SEAL_ARGUMENTS)
    stages["seal_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    opened = open_batch_into(envelope, DATA_KEY, pa.allocate_buffer)
    stages["open_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    result = pa.ipc.open_stream(opened).read_all()
    stages["read_seconds"] = time.perf_counter() - start
    return result, stages, ipc.size, len(envelope)


def bench_arrow(rows: int, repeat: int) -> dict[str, float]:
    table = make_table(rows)
    result, _, ipc_bytes, envelope_bytes = arrow_round_trip(table)  # check, and warm up
    if not result.equals(table):
        raise BenchmarkCheckError("Arrow table changed in the sealed round trip")
    runs = [arrow_round_trip(table)[1] for _ in range(repeat)]
    totals = [sum(stages.values()) for stages in runs]
    summary: dict[str, float] = {"rows": rows, "ipc_bytes": ipc_bytes,
                                 "envelope_bytes": envelope_bytes,
                                 "segment_size": DEFAULT_SEGMENT_SIZE}
    for stage in runs[0]:
        summary[stage] = statistics.median(stages[stage] for stages in runs)
    summary["end_to_end_seconds"] = statistics.median(totals)
    summary["end_to_end_min_seconds"] = min(totals)
    summary["rows_per_second"] = rows / summary["end_to_end_seconds"]
    summary["best_rows_per_second"] = rows / summary["end_to_end_min_seconds"]
    return summary


# -- output --------------------------------------------------------------------------------


def human_size(size: float) -> str:
    for unit, scale in (("MiB", MIB), ("KiB", KIB)):
        if size >= scale:
            return f"{size / scale:.4g} {unit}"
    return f"{size:g} B"


def print_report(numbers: dict[str, object]) -> None:
    if "records" in numbers:
        print_records(numbers["records"])
    if "batches" in numbers:
        print_batches(numbers["batches"])
    if "memory" in numbers:
        print_memory(numbers["memory"])
    if "arrow" in numbers:
        print_arrow(numbers["arrow"])
    environment = numbers["environment"]
    print(f"one Python thread, Arrow CPU threads {environment['arrow_cpu_threads']}, "
          f"{environment['cpu_count']} CPUs on this machine; median and min of "
          f"{environment['repeat']} runs; {environment['clock']} clock")


RECORD_COLUMNS = (("seal", "seal_record"), ("open", "open_record"),
                  ("seal_records", "seal_records"), ("open_records", "open_records"),
                  ("open_records_parsed", "open_records(parsed)"),
                  ("parse_envelope", "parse_envelope"), ("sort_open", "sort+open_group"),
                  ("peek_record", "peek_record"))
STREAM_COLUMNS = (("seal_record_stream", "seal_record_stream"),
                  ("open_record_stream", "open_record_stream"),
                  ("read_record_stream", "read_record_stream"))


def print_records(rows: list[dict[str, float]]) -> None:
    print("records/s, median (µs per record); one call per record for seal_record/open_record,"
          " one call per run for seal_records/open_records")
    print(f"{'payload':10}{'overhead':>9}" + "".join(f"{title:>22}" for _, title in
                                                   RECORD_COLUMNS))
    for row in rows:
        cells = "".join(
            f"{row[f'{name}_records_per_second']:,.0f} ({row[f'{name}_us_per_record']:.1f})"
            .rjust(22) for name, _ in RECORD_COLUMNS)
        print(f"{human_size(row['payload_bytes']):10}"
              f"{row['envelope_bytes'] - row['payload_bytes']:>7} B{cells}")
    print()
    print(f"record streams (record profile 2, {rows[0]['stream_records']:,} records a stream): "
          "records/s, median (µs per record)")
    print(f"{'payload':10}{'overhead':>11}" + "".join(f"{title:>22}" for _, title in
                                                     STREAM_COLUMNS))
    for row in rows:
        cells = "".join(
            f"{row[f'{name}_records_per_second']:,.0f} ({row[f'{name}_us_per_record']:.1f})"
            .rjust(22) for name, _ in STREAM_COLUMNS)
        print(f"{human_size(row['payload_bytes']):10}"
              f"{row['stream_overhead_per_record']:>9.1f} B{cells}")
    print()


def print_batches(rows: list[dict[str, float | str]]) -> None:
    print(f"{'batch':10}{'segment':10}{'operation':20}{'MiB/s':>10}{'best MiB/s':>12}"
          f"{'x raw':>8}")
    for row in rows:
        print(f"{human_size(row['batch_bytes']):10}{human_size(row['segment_size']):10}"
              f"{row['operation']:20}{row['mib_per_second']:>10,.0f}"
              f"{row['best_mib_per_second']:>12,.0f}{row['fraction_of_raw']:>8.2f}")
    print()


def print_memory(rows: list[dict[str, float | str]]) -> None:
    print(f"{'batch':10}{'segment':10}{'operation':20}{'tracemalloc peak':>18}"
          f"{'peak RSS delta':>16}{'= segments':>12}{'= batches':>11}")
    for row in rows:
        print(f"{human_size(row['batch_bytes']):10}{human_size(row['segment_size']):10}"
              f"{row['operation']:20}{human_size(row['tracemalloc_peak_bytes']):>18}"
              f"{human_size(row['subprocess_peak_rss_delta_bytes']):>16}"
              f"{row['tracemalloc_peak_in_segments']:>12.2f}"
              f"{row['tracemalloc_peak_in_batches']:>11.3f}")
    methods = sorted({row["subprocess_peak_rss_method"] for row in rows})
    print(f"(peak RSS delta: fresh subprocess, {', '.join(methods)}; '= segments' and "
          f"'= batches' are the tracemalloc peak over the segment and batch size)")
    print()


def print_arrow(arrow: dict[str, float]) -> None:
    print(f"Arrow: {arrow['rows']:,} rows, IPC {human_size(arrow['ipc_bytes'])}, "
          f"end to end {arrow['end_to_end_seconds'] * 1e3:.1f} ms = "
          f"{arrow['rows_per_second']:,.0f} "
          f"rows/s (best {arrow['best_rows_per_second']:,.0f}); serialize "
          f"{arrow['serialize_seconds'] * 1e3:.1f} ms, "
          f"seal {arrow['seal_seconds'] * 1e3:.1f} ms, "
          f"open {arrow['open_seconds'] * 1e3:.1f} ms, read {arrow['read_seconds'] * 1e3:.2f} ms")


def environment(repeat: int, quick: bool) -> dict[str, object]:
    return {
        "clock": next(name for name, function in CLOCKS.items() if function is clock),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "pyarrow": pa.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpu_count": os.cpu_count(),
        "arrow_cpu_threads": pa.cpu_count(),
        "threads": 1,
        "repeat": repeat,
        "quick": quick,
    }


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (seconds, for the smoke test), not for real numbers")
    parser.add_argument("--repeat", type=int, default=5,
                        help="timed runs per case after one warm-up; median and min reported")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="time with the wall clock (default) or this process's CPU time "
                             "(per-core cost on a machine shared with other work)")
    parser.add_argument("--only", action="append", choices=SECTIONS, metavar="SECTION",
                        help=f"run only this section (repeatable; one of {', '.join(SECTIONS)});"
                             " default: all")
    # The memory probe: this script re-run in a fresh process for one peak-RSS measurement.
    parser.add_argument("--memory-probe", choices=BATCH_OPERATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--probe-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--probe-segment", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--probe-workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.probe_size,
                                      args.probe_segment, args.probe_workdir)))
        return 0
    global clock
    clock = CLOCKS[args.clock]
    sizes = QUICK if args.quick else FULL
    try:
        with tempfile.TemporaryDirectory(prefix="sealbeam-bench-") as workdir:
            wanted = set(args.only or SECTIONS)
            runs: dict[str, Callable[[], object]] = {
                "records": lambda: bench_records(sizes["record_sizes"],
                                                 sizes["records_per_run"], args.repeat),
                # Arrow before the big batches, whose freed memory would otherwise feed it.
                "arrow": lambda: bench_arrow(sizes["arrow_rows"], args.repeat),
                "batches": lambda: bench_batches(sizes["batch_sizes"], sizes["segment_sizes"],
                                                 args.repeat, Path(workdir)),
                "memory": lambda: bench_memory(max(sizes["batch_sizes"]),
                                               sizes["segment_sizes"], Path(workdir)),
            }
            numbers: dict[str, object] = {"environment": environment(args.repeat, args.quick)}
            for section in SECTIONS:
                if section in wanted:
                    numbers[section] = runs[section]()
    except BenchmarkCheckError as error:
        print(f"envelope benchmark: error: {error}", file=sys.stderr)
        return 1
    print_report(numbers)
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
