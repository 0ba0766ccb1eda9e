"""Streaming, remote mode, record streams spanning several windows: the pieces (``SBRX``)
travel to the pool workers with their stream's routing facts, and the run equals the
in-process run of the same input.

A file drop of record streams (a DEK per stream) whose records fall into several 1-second
windows, every third record of the first file's streams two hours old (late), one stream line
delivered twice, one record of a stream spanning windows corrupted. Run once in-process and
once on two pool workers (processes, simulated SEV-SNP, the same no-k-anonymity spec), both on
FnApiRunner with two workers: each run reconciles in records (records_in = records_out +
dead_letters + duplicates + late) with the counts the input implies, the output rows are the
same, and the pool workers were sent exactly one envelope per (stream, window) of on-time
records, i.e. the pieces, not the streams.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from enclave_workers.records import INPUT_SCHEMA_FINGERPRINT
from envelope import read_record_stream, seal_record_stream
from pipelines.streaming import run_streaming
from pipelines.synthetic import REGIONS, write_partner_files
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pipelines.helpers import spec_without_k_anonymity
from tests.pipelines.run_support import output_rows
from tests.pool.conftest import PoolProcess, health_counts, start_pool_worker
from transforms.event_time import EVENT_TIME_CONTEXT_KEY, format_event_time

RECORDS = 60
PER_STREAM = 10
LATENESS_S = 900      # both runs, minutes apart, judge the same records on time
LATE_AGE_S = 7200     # and these late


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return spec_without_k_anonymity(tmp_path_factory.mktemp("spec"))


@pytest.fixture(scope="module")
def pool(broker: BrokerEnv, spec: Path) -> Iterator[list[PoolProcess]]:
    workers = [start_pool_worker(broker, "--feature_spec", str(spec)) for _ in range(2)]
    try:
        yield workers
    finally:
        for worker in workers:
            worker.kill()


def _drop(broker: BrokerEnv, work: Path) -> dict[str, Any]:
    """The drop folder and what its input implies: records, late, duplicated, dead, and
    how many pieces (one per stream and window of its on-time records) reach the pool."""
    now = time.time()
    files = write_partner_files(work / "partner", RECORDS, files_per_group=1, seed=47)
    drop = work / "drop"
    drop.mkdir()
    facts = {"drop": drop, "files": len(files), "total": 0, "late": 0, "duplicated": 0,
             "pieces": 0, "spanning": 0}
    corrupted = False
    for n, partner in enumerate(files):
        records = [line for line in partner.path.read_bytes().splitlines() if line.strip()]
        lines = []
        for start in range(0, len(records), PER_STREAM):
            chunk = records[start:start + PER_STREAM]
            times = [now - (LATE_AGE_S if n == 0 and i % 3 == 0 else 0.4 * i)
                     for i in range(len(chunk))]
            data_key, wrapped = broker.wrap_new_key(partner.region, partner.producer_id)
            stream = seal_record_stream(
                chunk, data_key=data_key, wrapped_key=wrapped, region=partner.region,
                producer_id=partner.producer_id, schema_fingerprint=INPUT_SCHEMA_FINGERPRINT,
                context={EVENT_TIME_CONTEXT_KEY: format_event_time(now)},
                event_times_ms=[round(t * 1000) for t in times])
            layout = read_record_stream(stream)
            on_time = [round(t * 1000) // 1000 for t in times if now - t < LATE_AGE_S / 2]
            windows = len(set(on_time))
            facts["pieces"] += windows
            facts["spanning"] += windows > 1
            if not corrupted and n > 0 and windows > 1 and len(chunk) > 3:
                damaged = bytearray(stream)
                damaged[layout.frame_offsets[3] + 30] ^= 0x01   # a record's ciphertext
                stream, corrupted = bytes(damaged), True
            lines.append(base64.b64encode(stream))
            facts["total"] += len(chunk)
            facts["late"] += len(chunk) - len(on_time)
        if n == 0:
            lines.append(lines[0])
            facts["duplicated"] = len(records[:PER_STREAM])
        (drop / f"{partner.path.stem}.sealed").write_bytes(b"\n".join(lines) + b"\n")
    assert corrupted and facts["spanning"] > 0 and facts["late"] > 0
    return facts


def _run(broker: BrokerEnv, facts: dict[str, Any], out: Path, spec: Path,
         **extra: str) -> Any:
    flags = {"input": str(facts["drop"] / "*.sealed"), "output_root": str(out),
             "broker_url": broker.url, "tee": "simulated-sev-snp",
             "dev_tee_dir": str(broker.dev_tee_dir), "regions": ",".join(REGIONS),
             "window_seconds": 1, "allowed_lateness_seconds": LATENESS_S,
             "poll_interval_seconds": 0.2, "max_files": facts["files"],
             "stop_after_seconds": 40, "feature_spec": str(spec),
             "direct_num_workers": 2, "direct_running_mode": "multi_threading", **extra}
    return run_streaming(PipelineOptions(flags=[f"--{k}={v}" for k, v in flags.items()]))


def test_a_remote_streaming_run_of_streams_spanning_windows_equals_the_in_process_run(
        broker: BrokerEnv, pool: list[PoolProcess], spec: Path, tmp_path: Path) -> None:
    facts = _drop(broker, tmp_path)
    in_process = _run(broker, facts, tmp_path / "in-process", spec)
    sent_before = sum(health_counts(w.url)["envelopes"] for w in pool)
    remote = _run(broker, facts, tmp_path / "remote", spec,
                  pool_endpoints=",".join(w.url for w in pool),
                  pool_policy=str(broker.settings.policy_path))
    sent = sum(health_counts(w.url)["envelopes"] for w in pool) - sent_before
    total, late, duplicated = facts["total"], facts["late"], facts["duplicated"]
    for summary in (in_process, remote):
        assert summary.records_in == total + duplicated
        assert (summary.duplicates, summary.late, summary.dead_letters) == (duplicated, late, 1)
        assert summary.records_out == total - late - 1
        assert summary.records_in == (summary.records_out + summary.dead_letters
                                      + summary.duplicates + summary.late)
        assert summary.reconciled
    assert remote.broker_calls == 0                  # the pool workers asked for the keys
    assert sent == facts["pieces"] > facts["total"] // PER_STREAM   # pieces, not streams
    rows = {region: output_rows(broker, tmp_path / "remote", region) for region in REGIONS}
    assert rows == {region: output_rows(broker, tmp_path / "in-process", region)
                    for region in REGIONS}
    assert sum(map(len, rows.values())) == total - late - 1
