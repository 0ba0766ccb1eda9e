"""Remote mode end to end: two pool workers (processes, simulated SEV-SNP) behind the batch
pipeline; the same rows as the in-process run; a worker killed mid-run loses nothing; every
output carries a custody statement its pool worker signed, which verifies offline."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from keybroker.identity import BrokerPublicKey
from pipelines.batch import RunSummary, build_batch_pipeline, run_batch, summarize_run
from pipelines.custody import verify_output
from pipelines.custody_run import verify_run
from pipelines.options import SealbeamOptions
from pipelines.reading import open_outputs
from pipelines.synthetic import REGIONS
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pipelines.helpers import assert_no_plaintext, plaintext_probes, sealed_partner_files
from tests.pool.conftest import PoolProcess, broker_public_key, health_counts, start_pool_worker
from transforms.metrics import NAMESPACE
from transforms.write import STATEMENT_SUFFIX

RECORDS = 240
BATCH = 8


def _options(broker: BrokerEnv, work: Path, out: str, **extra: str) -> PipelineOptions:
    flags = {"input": str(work / "sealed" / "*.sealed"), "output_root": str(work / out),
             "broker_url": broker.url, "tee": "simulated-sev-snp",
             "dev_tee_dir": str(broker.dev_tee_dir), "regions": ",".join(REGIONS),
             "min_batch_size": str(BATCH), "max_batch_size": str(BATCH), **extra}
    return PipelineOptions(flags=[f"--{k}={v}" for k, v in flags.items()])


def _remote(broker: BrokerEnv, work: Path, out: str, urls: list[str]) -> PipelineOptions:
    return _options(broker, work, out, pool_endpoints=",".join(urls),
                    pool_policy=str(broker.settings.policy_path))


def _rows(broker: BrokerEnv, root: Path) -> list[str]:
    rows: list[str] = []
    for region in REGIONS:
        table: pa.Table = open_outputs([root / region], keyring=broker.keyring, region=region)
        rows.extend(json.dumps(r, sort_keys=True, default=str) for r in table.to_pylist())
    return sorted(rows)


def _counts(summary: RunSummary) -> tuple[int, ...]:
    return (summary.records_in, summary.records_out, summary.dead_letters, summary.rows_out,
            summary.rows_suppressed)


def _names(root: Path) -> list[str]:
    """Every file the run committed (outputs and dead letters), relative to its root."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and not p.name.startswith("."))


def _health(url: str) -> dict[str, int]:
    return health_counts(url)


@pytest.fixture(scope="module")
def inputs(broker: BrokerEnv, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("remote")
    files, _ = sealed_partner_files(broker, work, RECORDS)
    in_process = run_batch(_options(broker, work, "in-process"))
    assert in_process.reconciled and in_process.records_in == RECORDS
    return work, files, in_process


def test_remote_run_equals_the_in_process_run(broker: BrokerEnv, inputs,
                                              pool_pair: list[PoolProcess]) -> None:
    work, files, in_process = inputs
    remote = run_batch(_remote(broker, work, "remote", [w.url for w in pool_pair]))
    assert remote.reconciled
    assert _counts(remote) == _counts(in_process)
    assert remote.broker_calls == 0                  # the Beam worker holds no key
    assert _rows(broker, work / "remote") == _rows(broker, work / "in-process")
    # The same batches, named by their inputs: the same file names as in-process.
    assert _names(work / "remote") == _names(work / "in-process")
    served = [_health(w.url)["envelopes"] for w in pool_pair]
    assert sum(served) >= RECORDS      # (other tests of the session use the same workers)
    assert assert_no_plaintext(work / "remote", plaintext_probes(files)) >= 2


def test_remote_outputs_carry_statements_that_verify_with_the_broker_key_alone(
        broker: BrokerEnv, inputs, pool_pair: list[PoolProcess]) -> None:
    work, _, in_process = inputs
    before = [_health(w.url)["batches"] for w in pool_pair]
    remote = run_batch(_remote(broker, work, "remote-custody", [w.url for w in pool_pair]))
    served = sum(_health(w.url)["batches"] > n for w, n in zip(pool_pair, before, strict=True))
    assert remote.reconciled and _counts(remote) == _counts(in_process)
    out = work / "remote-custody"
    outputs = sorted(p for p in out.glob("*/part-*") if not p.name.endswith(STATEMENT_SUFFIX))
    assert outputs
    key = BrokerPublicKey.load(broker_public_key(broker))
    sessions = set()
    for output in outputs:   # signed in the pool's TEE for the name Beam gave the file
        assert output.with_name(output.name + STATEMENT_SUFFIX).is_file(), output.name
        verdict = verify_output(output, broker_key=key)
        assert verdict.ok, verdict.reasons
        assert verdict.checks == {"digest": True, "chain": True, "inputs": True,
                                  "ledger": True, "policy": None}
        sessions.add(verdict.facts["session"])
    assert len(sessions) >= served >= 1      # each serving worker signs with its own session
    run = verify_run(out, broker_key=key)
    assert run.ok, run.reasons
    assert run.facts["envelopes_out"] == remote.records_out


def _killer(workers: list[PoolProcess], killed: list[PoolProcess], stop: threading.Event
            ) -> None:
    """Kill the first worker that has served a batch, as soon as it has."""
    while not stop.is_set():
        for worker in workers:
            if _health(worker.url)["batches"] >= 1:
                worker.kill()
                killed.append(worker)
                return
        time.sleep(0.002)


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(broker: BrokerEnv,
                                                              inputs) -> None:
    work, _, in_process = inputs
    workers = [start_pool_worker(broker), start_pool_worker(broker)]
    killed: list[PoolProcess] = []
    stop = threading.Event()
    try:
        killer = threading.Thread(target=_killer, args=(workers, killed, stop), daemon=True)
        killer.start()
        options = _remote(broker, work, "killed", [w.url for w in workers])
        pipeline = beam.Pipeline(runner=FnApiRunner(), options=options)
        built = build_batch_pipeline(pipeline, options)
        result = pipeline.run()
        result.wait_until_finish()
        stop.set()
        killer.join(timeout=5)
        summary = summarize_run(result, options.view_as(SealbeamOptions), built, 0.0)
    finally:
        stop.set()
        for worker in workers:
            worker.kill()
    assert len(killed) == 1 and killed[0].process.returncode is not None
    failovers = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE)
                                       .with_name("pool_failovers"))["counters"]
    assert sum(c.committed for c in failovers) >= 1, "the kill landed after the last batch"
    assert summary.reconciled
    assert _counts(summary) == _counts(in_process)
    assert _rows(broker, work / "killed") == _rows(broker, work / "in-process")
    # The batch that failed over to the other worker was written under its own name, once.
    assert _names(work / "killed") == _names(work / "in-process")


def test_a_remote_rerun_over_the_in_process_outputs_rewrites_the_same_files(
        broker: BrokerEnv, inputs, pool_pair: list[PoolProcess]) -> None:
    work, _, in_process = inputs
    before = _names(work / "in-process")
    rerun = run_batch(_remote(broker, work, "in-process", [w.url for w in pool_pair]))
    assert rerun.reconciled and _counts(rerun) == _counts(in_process)
    assert _names(work / "in-process") == before          # nothing added beside them
    assert len(_rows(broker, work / "in-process")) == in_process.rows_out


def test_remote_mode_drops_exact_copies_as_in_process(broker: BrokerEnv, inputs,
                                                      pool_pair: list[PoolProcess],
                                                      tmp_path: Path) -> None:
    work, _, in_process = inputs
    copies = tmp_path / "with-copies"
    copies.mkdir()
    sealed = sorted((work / "sealed").glob("*.sealed"))
    for path in sealed:
        shutil.copy(path, copies / path.name)
    shutil.copy(sealed[0], copies / "replayed.sealed")          # a partner resends a file
    replayed = sum(1 for line in sealed[0].read_bytes().splitlines() if line.strip())
    options = _options(broker, work, "copies", input=str(copies / "*.sealed"),
                       pool_endpoints=",".join(w.url for w in pool_pair),
                       pool_policy=str(broker.settings.policy_path))
    remote = run_batch(options)
    assert remote.reconciled and remote.duplicates == replayed
    assert remote.records_in == in_process.records_in + replayed
    assert remote.records_out == in_process.records_out
    assert _names(work / "copies") == _names(work / "in-process")   # each batch once
    assert _rows(broker, work / "copies") == _rows(broker, work / "in-process")


def test_record_streams_in_remote_mode_equal_the_in_process_run(
        broker: BrokerEnv, pool_pair: list[PoolProcess], tmp_path: Path) -> None:
    """Record profile 2 through the pool: the same counts (in records), rows and file names
    as in-process, and the run's custody verifies."""
    sealed_partner_files(broker, tmp_path, RECORDS, profile=2, records_per_stream=12)
    in_process = run_batch(_options(broker, tmp_path, "in-process"))
    remote = run_batch(_remote(broker, tmp_path, "remote", [w.url for w in pool_pair]))
    assert in_process.reconciled and remote.reconciled
    assert in_process.records_in == RECORDS and in_process.dead_letters == 0
    assert _counts(remote) == _counts(in_process)
    assert _rows(broker, tmp_path / "remote") == _rows(broker, tmp_path / "in-process")
    assert _names(tmp_path / "remote") == _names(tmp_path / "in-process")
    verdict = verify_run(tmp_path / "remote", broker_key=BrokerPublicKey.load(
        broker_public_key(broker)))
    assert verdict.ok, verdict.reasons
    assert verdict.facts["input_records"] == RECORDS
