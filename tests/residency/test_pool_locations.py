"""Pool workers' attested locations: preflight holds them against the map, the broker against
its ``worker_locations`` rule. Pool workers are real processes (simulated SEV-SNP, their
location in HOST_DATA via ``--worker_location``) of a real broker on loopback."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from keybroker.kms.local import LocalKeyring
from pipelines.batch import check_reconciled, run_batch
from pipelines.preflight import PreflightRefused, preflight_job
from pipelines.preflight.pool import pool_location_patterns
from pipelines.residency import ResidencyMap
from tests.enclave_workers.broker_env import (
    ALLOWED_PRODUCERS,
    DENIED_PRODUCER,
    REGIONS,
    BrokerEnv,
    person,
    seal_json,
)
from tests.pipelines.helpers import sealed_partner_files
from tests.pool.conftest import PoolProcess, start_pool_worker
from tests.support.broker import ledger_entries, start_broker
from transforms.pool_client import PoolEndpoint
from transforms.pool_trust import PoolAttestationError, PoolTrust

WORKER_LOCATIONS = {"eu": ["europe-west4"], "us": ["us-central1"]}


def _located(document: dict[str, Any]) -> None:
    for rule in document["rules"]:
        rule["producers"] = list(ALLOWED_PRODUCERS)
        rule["worker_locations"] = WORKER_LOCATIONS


@pytest.fixture(scope="module")
def located(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerEnv]:
    """A broker whose release rule requires each region's worker location."""
    state_dir = tmp_path_factory.mktemp("located") / "state"
    with start_broker(state_dir, regions=REGIONS, tenants=(*ALLOWED_PRODUCERS, DENIED_PRODUCER),
                      policy_edit=_located) as broker:
        settings = broker.settings
        yield BrokerEnv(state_dir, settings, broker.url, LocalKeyring.open(settings.keyring_path))


@pytest.fixture(scope="module")
def pools(located: BrokerEnv) -> Iterator[dict[str, PoolProcess]]:
    workers = {"us": start_pool_worker(located, "--worker_location", "us-central1"),
               "eu": start_pool_worker(located, "--worker_location", "europe-west4"),
               "none": start_pool_worker(located)}
    try:
        yield workers
    finally:
        for worker in workers.values():
            worker.kill()


def _map_document(tmp_path: Path) -> dict[str, Any]:
    return {
        "version": 1,
        "regions": {name: {"locations": ["local"], "kek": f"local://{name}", "local_kek": True,
                           "sink": f"file://{tmp_path}/{name}",
                           "dead_letter_sink": f"file://{tmp_path}/{name}-dl",
                           "worker_locations": WORKER_LOCATIONS[name]}
                    for name in ("eu", "us")},
        "unrouted_dead_letter_sink": f"file://{tmp_path}/q",
    }


def _map(tmp_path: Path) -> ResidencyMap:
    return ResidencyMap.from_document(_map_document(tmp_path))


def _options(located: BrokerEnv, *urls: str) -> PipelineOptions:
    return PipelineOptions(flags=[f"--pool_endpoints={','.join(urls)}",
                                  f"--pool_policy={located.settings.policy_path}",
                                  f"--dev_tee_dir={located.dev_tee_dir}"])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_preflight_takes_pool_workers_attested_where_the_map_allows(
        located: BrokerEnv, pools: dict[str, PoolProcess], tmp_path: Path) -> None:
    residency = _map(tmp_path)
    report = preflight_job(_options(located, pools["eu"].url), residency, frozenset({"eu"}))
    assert [(w.location, w.source) for w in report.workers] == [
        ("europe-west4", f"pool worker {pools['eu'].url}, attested")]
    report = preflight_job(_options(located, pools["us"].url), residency, frozenset({"us"}))
    assert report.workers[0].location == "us-central1" and report.refusals == ()


def test_preflight_refuses_a_pool_worker_attested_elsewhere(
        located: BrokerEnv, pools: dict[str, PoolProcess], tmp_path: Path) -> None:
    us = pools["us"].url
    with pytest.raises(PreflightRefused) as refused:
        preflight_job(_options(located, pools["eu"].url, us), _map(tmp_path), frozenset({"eu"}))
    assert str(refused.value) == (
        f"preflight refused: workers (pool worker {us}, attested) are in us-central1; "
        "region eu allows workers in europe-west4")
    with pytest.raises(PreflightRefused, match=f"pool worker {pools['eu'].url}, attested\\) are "
                       "in europe-west4; region us allows workers in us-central1"):
        preflight_job(_options(located, pools["eu"].url), _map(tmp_path),
                      frozenset({"eu", "us"}))


def test_preflight_refuses_a_pool_worker_without_a_location_or_attestation(
        located: BrokerEnv, pools: dict[str, PoolProcess], tmp_path: Path) -> None:
    none = pools["none"].url
    with pytest.raises(PreflightRefused) as refused:
        preflight_job(_options(located, none), _map(tmp_path), frozenset({"eu"}))
    assert str(refused.value) == (
        f"preflight refused: pool worker {none} has no attested location (its sev-snp "
        "evidence does not say where it runs); region eu allows workers in europe-west4")
    gone = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(PreflightRefused, match=f"pool worker {gone} could not be attested "
                       ".*; region eu allows workers in europe-west4"):
        preflight_job(_options(located, gone), _map(tmp_path), frozenset({"eu"}))


def test_residency_check_attests_the_pool_endpoints_it_is_given(
        located: BrokerEnv, pools: dict[str, PoolProcess], tmp_path: Path, capsys) -> None:
    from pipelines.cli import main

    path = tmp_path / "residency.yaml"
    path.write_text(json.dumps(_map_document(tmp_path)))
    trust = ["--pool_policy", str(located.settings.policy_path),
             "--dev_tee_dir", str(located.dev_tee_dir)]
    eu, us = pools["eu"].url, pools["us"].url
    assert main(["residency", "check", str(path), "--regions", "eu", "--preflight",
                 "--pool_endpoints", eu, *trust]) == 0
    out = capsys.readouterr().out
    assert f"preflight workers (pool worker {eu}, attested): europe-west4: ok" in out
    assert main(["residency", "check", str(path), "--regions", "eu",
                 "--pool_endpoints", f"{eu},{us}", *trust]) == 2
    assert capsys.readouterr().err.strip() == (
        f"sealbeam: error: preflight refused: workers (pool worker {us}, attested) are in "
        "us-central1; region eu allows workers in europe-west4")
    assert main(["residency", "check", str(path), "--pool_endpoints", eu]) == 2
    assert capsys.readouterr().err.strip() == "sealbeam: error: --pool_policy is required"


def test_an_output_root_map_does_not_attest_the_pool(located: BrokerEnv, tmp_path: Path
                                                      ) -> None:
    gone = f"http://127.0.0.1:{_free_port()}"
    residency = ResidencyMap.from_output_root(str(tmp_path), frozenset({"eu"}))
    assert preflight_job(_options(located, gone), residency, frozenset({"eu"})).workers == ()


def _endpoint(located: BrokerEnv, pool: PoolProcess, **trust: Any) -> PoolEndpoint:
    base = PoolTrust.from_file(str(located.settings.policy_path), str(located.dev_tee_dir))
    return PoolEndpoint(pool.url, replace(base, **trust).verifier(),
                        spec_fingerprint=pool.spec_fingerprint, output_format="sealed-arrow",
                        timeout_s=30)


def test_the_broker_refuses_an_eu_key_to_a_us_located_pool_worker(
        located: BrokerEnv, pools: dict[str, PoolProcess]) -> None:
    key, wrapped = located.wrap_new_key("eu", "acme")
    batch = [seal_json(person(i, "eu"), key, wrapped, "eu", "acme") for i in range(3)]
    us_reply = _endpoint(located, pools["us"]).process(batch, batch_id=b"\x07" * 16)
    assert not us_reply.outputs
    assert len(us_reply.dead_letters) == 3
    denials = [e for e in ledger_entries(located.settings)
               if e.event == "release" and e.decision == "denied"]
    assert denials and "worker location 'us-central1' not allowed for region 'eu'" in str(
        denials[-1].details)
    eu_reply = _endpoint(located, pools["eu"]).process(batch, batch_id=b"\x08" * 16)
    assert eu_reply.outputs and not eu_reply.dead_letters


def test_a_pool_trust_with_worker_locations_refuses_other_workers_per_handshake(
        located: BrokerEnv, pools: dict[str, PoolProcess]) -> None:
    assert _endpoint(located, pools["eu"], worker_locations=("europe-*",)).attest().location \
        == "europe-west4"
    with pytest.raises(PoolAttestationError, match="attested in us-central1; allowed: "
                       "europe-\\*"):
        _endpoint(located, pools["us"], worker_locations=("europe-*",)).attest()
    with pytest.raises(PoolAttestationError, match="attested in no location"):
        _endpoint(located, pools["none"], worker_locations=("europe-*",)).attest()


def test_pool_location_patterns_are_what_every_region_allows(tmp_path: Path) -> None:
    residency = _map(tmp_path)
    assert pool_location_patterns(residency, ["eu"]) == ("europe-west4",)
    assert pool_location_patterns(residency, ["eu", "us"]) == ()     # no pool serves both
    derived = ResidencyMap.from_output_root(str(tmp_path), frozenset({"eu"}))
    assert pool_location_patterns(derived, ["eu"]) is None


def test_a_remote_run_on_a_pool_in_the_region(located: BrokerEnv, pools: dict[str, PoolProcess],
                                              tmp_path: Path) -> None:
    """End to end: preflight attests the eu pool worker, the run's handshakes hold it to
    europe-west4, and its outputs land in the eu sink; the us records are dead letters."""
    sealed_partner_files(located, tmp_path / "in", 24)
    residency = tmp_path / "residency.yaml"
    residency.write_text(json.dumps({
        "version": 1,
        "regions": {name: {"locations": ["local"], "kek": located.settings.region_keks[name],
                           "local_kek": True, "sink": f"file://{tmp_path}/{name}-out",
                           "dead_letter_sink": f"file://{tmp_path}/{name}-dl",
                           "worker_locations": WORKER_LOCATIONS[name]}
                    for name in ("eu", "us")},
        "unrouted_dead_letter_sink": f"file://{tmp_path}/q"}))
    flags = {"input": str(tmp_path / "in" / "sealed" / "*.sealed"),
             "residency_map": str(residency), "regions": "eu",
             "pool_endpoints": pools["eu"].url,
             "pool_policy": str(located.settings.policy_path),
             "dev_tee_dir": str(located.dev_tee_dir)}
    summary = run_batch(PipelineOptions(flags=[f"--{k}={v}" for k, v in flags.items()]))
    check_reconciled(summary)
    assert list(summary.outputs_by_region) == ["eu"] and summary.records_out > 0
    workers = summary.residency["preflight"]["workers"]          # type: ignore[index]
    assert workers == [{"location": "europe-west4", "refusal": None,
                        "source": f"pool worker {pools['eu'].url}, attested"}]
    assert any((tmp_path / "eu-out").rglob("part-*"))


def test_only_the_simulated_tee_takes_a_worker_location() -> None:
    from enclave_workers.pool.tee import make_provider

    with pytest.raises(ValueError, match="--worker_location is for simulated-sev-snp"):
        make_provider("configfs-tsm", None, location="europe-west4")


def test_a_bad_pool_setting_is_one_line_before_anything_is_attested(
        located: BrokerEnv, tmp_path: Path) -> None:
    from pipelines.errors import PipelineError

    discovery = tmp_path / "pool.json"
    discovery.write_text("{not json")
    options = PipelineOptions(flags=[f"--pool_discovery={discovery}",
                                     f"--pool_policy={located.settings.policy_path}"])
    with pytest.raises(PipelineError, match="Expecting property name"):
        preflight_job(options, _map(tmp_path), frozenset({"eu"}))
    no_policy = PipelineOptions(flags=["--pool_endpoints=http://127.0.0.1:9"])
    with pytest.raises(PipelineError, match="--pool_policy"):
        preflight_job(no_policy, _map(tmp_path), frozenset({"eu"}))
