"""The batch pipeline on four worker processes (FnApiRunner, multi_processing): more than
one process works, the outputs are those of a one-worker run (same files, same rows), and the
broker releases each data key once."""

from __future__ import annotations

from pathlib import Path

import pytest

from keybroker.ledger import AuditLedger
from pipelines.batch import run_batch
from pipelines.synthetic import REGIONS
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pipelines.helpers import sealed_partner_files
from tests.pipelines.run_support import (
    RECORDS_PER_KEY,
    batch_options,
    output_names,
    output_rows,
    run_with_hook,
    worker_options,
)

RECORDS = 160


def _ledger_since(broker: BrokerEnv, after: int) -> list:
    with AuditLedger(broker.settings.ledger_path, read_only=True) as ledger:
        return [e for e in ledger.entries() if e.seq > after]


def _ledger_head(broker: BrokerEnv) -> int:
    with AuditLedger(broker.settings.ledger_path, read_only=True) as ledger:
        return ledger.head()[0]


@pytest.mark.usefixtures("worker_processes")
def test_four_workers_share_the_work_and_write_what_one_worker_writes(
        broker: BrokerEnv, tmp_path: Path) -> None:
    files, _ = sealed_partner_files(broker, tmp_path, RECORDS)
    data_keys = sum(-(-f.records // RECORDS_PER_KEY) for f in files)
    pattern = str(tmp_path / "sealed" / "*.sealed")
    markers = tmp_path / "markers"
    markers.mkdir()

    before = _ledger_head(broker)
    many = run_with_hook(
        worker_options(broker, pattern, tmp_path / "many", 4, range_bytes=4096),
        "MarkWorker", str(markers))
    entries = _ledger_since(broker, before)
    attests = [e for e in entries if e.event == "attest"]
    releases = [e for e in entries if e.event == "release"]
    working = {m.name.split("-")[0] for m in markers.iterdir()}

    assert many.reconciled and many.records_in == RECORDS and many.duplicates == 0
    assert 2 <= len(attests) <= 4, "one attestation per worker process that did work"
    assert len(working) >= 2, "only one worker process produced outputs"
    # The bound (docs/ARCHITECTURE.md): with --key_spread=1 every data key is released once.
    assert len(releases) == data_keys
    assert len({e.details["key_id"] for e in releases}) == data_keys

    one = run_batch(batch_options(broker, pattern, tmp_path / "one"))
    assert one.reconciled and one.records_out == many.records_out
    assert output_names(tmp_path / "one") == output_names(tmp_path / "many")
    for region in REGIONS:
        assert output_rows(broker, tmp_path / "one", region) == \
            output_rows(broker, tmp_path / "many", region)
