"""The whole batch pipeline behind issue 9's man in the middle: the workers refuse its keys.

The proxy (tests/keybroker/mitm_proxy.py) relays attest and release unchanged and swaps the
sealed key of every generate and release-named reply for one it chose, sealed to the
worker's TEE key. The workers pin the broker's identity key (by default the one beside the
dev chain), so the run fails with ``BrokerReplyNotAuthenticError`` and writes no output
under a key the proxy knows; the same run straight to the broker succeeds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from keybroker.client import BrokerReplyNotAuthenticError
from pipelines.batch import run_batch
from pipelines.synthetic import REGIONS
from tests.enclave_workers.broker_env import BrokerEnv
from tests.keybroker.mitm_proxy import mitm_proxy
from tests.pipelines.helpers import sealed_partner_files

RECORDS = 40


def _options(broker_url: str, broker: BrokerEnv, work: Path, out: str) -> PipelineOptions:
    flags = {"input": str(work / "sealed" / "*.sealed"), "output_root": str(work / out),
             "broker_url": broker_url, "tee": "simulated-sev-snp",
             "dev_tee_dir": str(broker.dev_tee_dir), "regions": ",".join(REGIONS),
             "min_batch_size": "8"}
    return PipelineOptions(flags=[f"--{k}={v}" for k, v in flags.items()])


def test_the_pipeline_refuses_keys_swapped_by_a_man_in_the_middle(
    broker: BrokerEnv, tmp_path: Path
) -> None:
    sealed_partner_files(broker, tmp_path, RECORDS)
    with mitm_proxy(broker.url, swap_keys=True) as proxy:
        with pytest.raises(BrokerReplyNotAuthenticError, match="does not match the reply"):
            run_batch(_options(proxy.url, broker, tmp_path, "out-mitm"))
        assert proxy.chosen_keys, "the proxy swapped at least one key"
    written = [p for p in (tmp_path / "out-mitm").rglob("*") if p.is_file()
               and "dead-letter" not in p.parts]
    assert written == [], "nothing may be sealed under a key from the proxy"

    summary = run_batch(_options(broker.url, broker, tmp_path, "out-direct"))
    assert summary.records_in == RECORDS and summary.reconciled
