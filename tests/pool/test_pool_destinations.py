"""Remote mode records destinations as in-process runs do, and the pool checks them.

A batch run with a residency map on two pool workers (processes, simulated SEV-SNP): every
``generate`` entry the run added to the broker's ledger carries its region's sink and the
location preflight found, exactly as the in-process run's entries do. The pool worker checks
what the Beam side sends: a destination of another region than the batch's envelopes, or a
malformed one, is refused (400) before any key is generated; output keys are cached per
destination, so a batch bound for another sink gets a key whose ledger entry names that sink;
a worker started with ``--require_destination`` refuses a batch that names none. The request
header's destination round-trips through the wire format (hypothesis).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_workers.pool import wire
from enclave_workers.pool.channel import ChannelKeys, seal_request_secret
from pipelines.batch import RunSummary, run_batch
from pipelines.synthetic import REGIONS
from tests.enclave_workers.broker_env import BrokerEnv, person, seal_json
from tests.pipelines.helpers import sealed_partner_files
from tests.pool.conftest import REPO_ROOT, PoolProcess
from tests.support.broker import ledger_entries
from tests.support.residency import file_residency_map, granted_destinations, ledger_head
from transforms.pool_client import PoolEndpoint, PoolError, PoolUnavailableError
from transforms.pool_trust import PoolTrust

RECORDS = 48


def _run(broker: BrokerEnv, sealed: str, residency: Path, **extra: str) -> RunSummary:
    flags = {"input": sealed, "residency_map": str(residency), "broker_url": broker.url,
             "tee": "simulated-sev-snp", "dev_tee_dir": str(broker.dev_tee_dir),
             "regions": ",".join(REGIONS), "min_batch_size": "8", "max_batch_size": "8",
             **extra}
    summary = run_batch(PipelineOptions(flags=[f"--{k}={v}" for k, v in flags.items()]))
    assert summary.reconciled and summary.output_files > 0
    return summary


def test_a_remote_run_records_the_same_destinations_as_an_in_process_run(
        broker: BrokerEnv, located_pool_pair: list[PoolProcess], tmp_path: Path) -> None:
    sealed_partner_files(broker, tmp_path, RECORDS)
    sealed = str(tmp_path / "sealed" / "*.sealed")
    found = {}
    for mode, extra in (("in-process", {}),
                        ("remote", {"pool_endpoints": ",".join(w.url for w in located_pool_pair),
                                    "pool_policy": str(broker.settings.policy_path)})):
        root = tmp_path / mode
        before = ledger_head(broker.settings)
        summary = _run(broker, sealed,
                       file_residency_map(tmp_path / f"{mode}.json", broker.settings, root),
                       **extra)
        if mode == "remote":
            assert summary.broker_calls == 0          # the pool workers asked for the keys
        found[mode] = granted_destinations(broker.settings, before)
        assert found[mode] == {
            region: {json.dumps({"sink": f"file://{root}/{region}-out", "location": "local",
                                 "verified": True}, sort_keys=True)} for region in REGIONS}
    assert found["remote"].keys() == found["in-process"].keys()


def _endpoint(broker: BrokerEnv, pool: PoolProcess) -> PoolEndpoint:
    trust = PoolTrust.from_file(str(broker.settings.policy_path), str(broker.dev_tee_dir))
    return PoolEndpoint(pool.url, trust.verifier(), spec_fingerprint=pool.spec_fingerprint,
                        output_format="sealed-arrow", timeout_s=30)


def _eu_batch(broker: BrokerEnv, count: int = 4) -> list[bytes]:
    key, wrapped = broker.wrap_new_key("eu", "acme")
    return [seal_json(person(i, "eu"), key, wrapped, "eu", "acme") for i in range(count)]


def _destination(region: str, sink: str, location: str = "EUROPE-WEST4") -> dict[str, object]:
    return {"region": region, "sink": sink, "location": location, "verified": True}


def test_the_pool_refuses_a_destination_of_another_region_or_a_malformed_one(
        broker: BrokerEnv, pool_pair: list[PoolProcess],
        monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = _endpoint(broker, pool_pair[0])
    batch = _eu_batch(broker)
    generates = len(ledger_entries(broker.settings, "generate"))
    with pytest.raises(PoolUnavailableError, match="process answered 400 the destination is "
                       "of region 'us', but the batch holds envelopes of region 'eu'"):
        endpoint.process(batch, batch_id=b"\x02" * 16,
                         destination=_destination("us", "gs://sb-us-out/f", "US"))
    # The Beam side checks before sending; a client that does not is refused by the pool.
    with pytest.raises(PoolError, match=r"destination\.location"):
        endpoint.process(batch, batch_id=b"\x02" * 16,
                         destination=_destination("eu", "gs://sb-eu-out/f", "EU west"))
    monkeypatch.setattr(wire, "check_destination", lambda destination: dict(destination))
    for bad, field in ((_destination("eu", "http://elsewhere.example/x"), "destination.sink"),
                       (_destination("eu", "gs://sb-eu-out/f", "EU west"),
                        "destination.location"),
                       ({**_destination("eu", "gs://sb-eu-out/f"), "extra": 1}, "destination"),
                       (_destination("EU", "gs://sb-eu-out/f"), "destination.region")):
        with pytest.raises(PoolUnavailableError, match=f"process answered 400 {re.escape(field)}"):
            endpoint.process(batch, batch_id=b"\x02" * 16, destination=bad)
    assert len(ledger_entries(broker.settings, "generate")) == generates   # no key was made


def test_pool_output_keys_are_generated_per_destination(
        broker: BrokerEnv, pool_pair: list[PoolProcess], tmp_path: Path) -> None:
    endpoint = _endpoint(broker, pool_pair[1])
    before = ledger_head(broker.settings)
    first = _destination("eu", f"file://{tmp_path}/first", "local")
    second = _destination("eu", f"file://{tmp_path}/second", "local")
    for batch_id, destination in ((b"\x03" * 16, first), (b"\x04" * 16, second),
                                  (b"\x05" * 16, first)):
        response = endpoint.process(_eu_batch(broker), batch_id=batch_id,
                                    destination=destination)
        assert response.outputs and not response.dead_letters
    recorded = [entry.details["destination"] for entry in ledger_entries(broker.settings,
                                                                         "generate")
                if entry.seq > before and entry.decision == "granted"]
    # the third batch reuses the first batch's cached key: one generate per destination
    assert recorded == [{k: v for k, v in d.items() if k != "region"}
                        for d in (first, second)]


_SINK = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
                max_size=200)


@settings(max_examples=60, deadline=None)
@given(region=st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True),
       scheme=st.sampled_from(("file://", "gs://", "azfs://", "abfs://")), path=_SINK,
       location=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,30}", fullmatch=True),
       verified=st.booleans())
def test_a_request_destination_round_trips(region: str, scheme: str, path: str, location: str,
                                           verified: bool) -> None:
    channel = ChannelKeys()
    destination = {"region": region, "sink": scheme + path, "location": location,
                   "verified": verified}
    sealed_secret, keys = seal_request_secret(channel.public_bytes())
    _, chunks = wire.encode_request(sealed_secret, keys, spec_fingerprint="ab" * 32,
                                    output_format="sealed-arrow", envelopes=[b"x"],
                                    batch_id=b"\x01" * 16, destination=destination)
    body = b"".join(chunks)
    offset = 0

    def read(count: int) -> bytes:
        nonlocal offset
        chunk = body[offset:offset + count]
        offset += len(chunk)
        return chunk

    request = wire.read_request(read, channel)
    assert request.destination == destination and request.envelopes == [b"x"]


def test_a_pool_started_with_require_destination_refuses_a_batch_without_one(
        broker: BrokerEnv, tmp_path: Path) -> None:
    # through ``sealbeam worker serve``, which passes the on/off flag on to the pool module
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "worker", "serve", "--broker_url", broker.url,
         "--dev_tee_dir", str(broker.dev_tee_dir), "--port", "0", "--require_destination"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        pool = PoolProcess(process, ready["url"], ready["spec_fingerprint"])
        endpoint = _endpoint(broker, pool)
        with pytest.raises(PoolUnavailableError, match=r"process answered 400 this pool worker "
                           r"requires each batch's destination \(--require_destination\)"):
            endpoint.process(_eu_batch(broker), batch_id=b"\x06" * 16)
        response = endpoint.process(
            _eu_batch(broker), batch_id=b"\x06" * 16,
            destination=_destination("eu", f"file://{tmp_path}/eu", "local"))
        assert response.outputs
    finally:
        process.kill()
        process.wait(timeout=10)
