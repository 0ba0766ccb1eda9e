"""Release rules on the attested worker's location: a us worker cannot obtain an eu key."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enclave_workers.evidence.simulated_snp import SimulatedSnpProvider
from envelope import DataKey
from envelope.transport import TeeKeyPair, report_data_binding
from keybroker.attestation.claims import Claims
from keybroker.attestation.simulated_location import host_data_location, location_host_data
from keybroker.client import BrokerClient, BrokerDeniedError, BrokerSession
from keybroker.kms.local import LocalKeyring
from keybroker.policy import PolicyFormatError, ReleasePolicy
from keybroker.policy.location import attested_location
from keybroker.service.server import RunningBroker
from tests.support.broker import ledger_entries, start_broker

EU_WORKERS = ["europe-west4", "westeurope", "eu-*"]
US_WORKERS = ["us-central1", "eastus"]


def _claims(tee: str, *, zone: str | None = None, host_data: bytes = bytes(32),
            simulated: bool = False, location: str | None = None) -> Claims:
    platform: dict[str, Any] = {"host_data": host_data.hex()}
    if zone is not None:
        platform["zone"] = zone
        platform["support_attributes"] = ["STABLE"]
    if location is not None:
        platform["location"] = location
    return Claims(tee=tee, report_version=2, debug=False, measurement="ab" * 48,
                  report_data=bytes(64), product=None, signing_key=None, tcb={},
                  simulated=simulated, platform=platform)


def _policy(**extra: Any) -> ReleasePolicy:
    rule = {"name": "workers", "tee": ["confidential-space", "sev-snp", "maa"],
            "allow_simulated": True, "measurements": ["ab" * 48, "*"], "regions": ["eu", "us"],
            "keks": ["*"], "producers": ["*"],
            "worker_locations": {"eu": EU_WORKERS, "us": US_WORKERS}, **extra}
    return ReleasePolicy.from_mapping({"version": 1, "allow_simulated": True, "rules": [rule]})


@pytest.mark.parametrize(("claims", "location"), [
    (_claims("confidential-space", zone="europe-west4-b"), "europe-west4"),
    (_claims("confidential-space", zone="us-central1-a"), "us-central1"),
    (_claims("sev-snp", simulated=True, host_data=location_host_data("eu-local")), "eu-local"),
    (_claims("sev-snp", simulated=False, host_data=location_host_data("eu-local")), None),
    (_claims("sev-snp", simulated=True), None),
    (_claims("maa", location="WestEurope"), None),        # no verifier vouches for that field
    (_claims("azure-cvm", location="westeurope"), None),
    (_claims("maa"), None),
])
def test_attested_location(claims: Claims, location: str | None) -> None:
    assert attested_location(claims) == location


def test_a_us_worker_is_refused_an_eu_key() -> None:
    policy = _policy()
    us_worker = _claims("confidential-space", zone="us-central1-a")
    eu_worker = _claims("confidential-space", zone="europe-west4-a")
    denied = policy.evaluate_release(us_worker, "local://eu", "eu", "acme")
    assert not denied.allowed
    assert denied.reason == ("worker location 'us-central1' not allowed for region 'eu' by "
                             "rule workers (allowed: europe-west4, westeurope, eu-*)")
    assert policy.evaluate_release(us_worker, "local://us", "us", "acme").allowed
    assert policy.evaluate_release(eu_worker, "local://eu", "eu", "acme").allowed
    assert not policy.evaluate_release(eu_worker, "local://us", "us", "acme").allowed


def test_no_attested_location_or_unlisted_region_is_denied() -> None:
    policy = _policy(regions=["eu", "us", "apac"])
    unknown = _claims("sev-snp", simulated=True)
    assert "worker location not attested by the sev-snp evidence" in policy.evaluate_release(
        unknown, "local://eu", "eu", "acme").reason
    eu_worker = _claims("confidential-space", zone="europe-west4-a")
    assert policy.evaluate_release(eu_worker, "k", "apac", "acme").reason == (
        "region 'apac' has no worker_locations in rule workers")


def test_a_rule_without_the_field_does_not_check_locations() -> None:
    policy = ReleasePolicy.from_mapping({"version": 1, "rules": [{
        "name": "any", "tee": ["confidential-space"], "measurements": ["ab" * 48],
        "regions": ["eu"], "keks": ["*"], "producers": ["*"]}]})
    us_worker = _claims("confidential-space", zone="us-central1-a")
    assert policy.evaluate_release(us_worker, "local://eu", "eu", "acme").allowed


@pytest.mark.parametrize(("value", "message"), [
    ([], "rules[0].worker_locations: expected a mapping of region -> locations"),
    ({"EU": ["x"]}, "rules[0].worker_locations: not a region name: 'EU'"),
    ({"eu": []}, "rules[0].worker_locations.eu: must not be empty"),
    ({"eu": ["Europe West"]}, "rules[0].worker_locations.eu[0]: expected a lowercase location"),
])
def test_bad_worker_locations(value: object, message: str) -> None:
    with pytest.raises(PolicyFormatError) as raised:
        _policy(worker_locations=value)
    assert str(raised.value).startswith(message)


def test_simulated_location_round_trip() -> None:
    assert host_data_location(location_host_data("europe-west4")) == "europe-west4"
    assert host_data_location(bytes(32)) is None
    with pytest.raises(ValueError, match="simulated location"):
        location_host_data("a location with spaces")


def _with_worker_locations(document: dict[str, Any]) -> None:
    for rule in document["rules"]:
        rule["worker_locations"] = {"eu": EU_WORKERS, "us": US_WORKERS}


@pytest.fixture(scope="module")
def located_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    with start_broker(tmp_path_factory.mktemp("located") / "state",
                      policy_edit=_with_worker_locations) as broker:
        yield broker


def _attest(broker: RunningBroker, location: str) -> BrokerSession:
    client = BrokerClient(broker.url)
    keys = TeeKeyPair.generate()
    nonce = client.challenge()
    provider = SimulatedSnpProvider(Path(str(broker.settings.dev_chain_dir)), location=location)
    evidence = provider.collect(report_data_binding(nonce, keys.public_bytes()))
    return client.attest(nonce, evidence.tee, evidence.evidence, dict(evidence.endorsements),
                         keys.public_bytes())


def test_broker_refuses_an_eu_key_to_a_us_located_worker(located_broker: RunningBroker
                                                         ) -> None:
    settings = located_broker.settings
    keyring = LocalKeyring.open(settings.keyring_path)
    from envelope.keys import dek_wrap_aad

    wrapped = keyring.wrap(keyring.kek_for_region("eu"), DataKey.generate().secret_bytes(),
                           dek_wrap_aad("eu", "acme"))
    client = BrokerClient(located_broker.url)
    us_session = _attest(located_broker, "us-central1")
    with pytest.raises(BrokerDeniedError, match="worker location 'us-central1' not allowed "
                       "for region 'eu'"):
        client.release(us_session, wrapped, "eu", "acme")
    with pytest.raises(BrokerDeniedError, match="worker location 'us-central1'"):
        client.generate(us_session, "eu", "acme")
    client.generate(us_session, "us", "acme")                  # its own region: granted
    eu_session = _attest(located_broker, "europe-west4")
    assert client.release(eu_session, wrapped, "eu", "acme")
    denials = [e for e in ledger_entries(settings) if e.event == "release"
               and e.decision == "denied"]
    assert denials and "worker location 'us-central1'" in str(denials[-1].details)


def test_policy_snippet_from_a_residency_map(repo_root: Path, capsys) -> None:
    import yaml

    from pipelines.cli import main

    assert main(["residency", "policy",
                 str(repo_root / "examples" / "residency" / "residency.yaml")]) == 0
    field = yaml.safe_load(capsys.readouterr().out)
    assert field == {"worker_locations": {"eu": ["europe-west4"],
                                          "us": ["eastus", "us-central1"]}}
    rule = {"name": "workers", "tee": ["confidential-space"], "measurements": ["ab" * 48],
            "regions": ["eu", "us"], "keks": ["*"], "producers": ["*"], **field}
    policy = ReleasePolicy.from_mapping({"version": 1, "rules": [rule]})
    us_worker = _claims("confidential-space", zone="us-central1-f")
    assert not policy.evaluate_release(us_worker, "k", "eu", "acme").allowed
    assert policy.evaluate_release(us_worker, "k", "us", "acme").allowed


def test_policy_snippet_names_the_maps_maa_location_claim(repo_root: Path, tmp_path: Path,
                                                          capsys) -> None:
    import yaml

    from pipelines.cli import main

    example = repo_root / "examples" / "residency" / "residency.yaml"
    path = tmp_path / "residency.yaml"
    path.write_text(example.read_text(encoding="utf-8")
                    + "maa_location_claim: sealbeam-vm-location\n", encoding="utf-8")
    assert main(["residency", "policy", str(path)]) == 0
    field = yaml.safe_load(capsys.readouterr().out)
    assert field == {"maa_location_claim": "sealbeam-vm-location",
                     "worker_locations": {"eu": ["europe-west4"],
                                          "us": ["eastus", "us-central1"]}}
    rule = {"name": "azure", "tee": ["maa"], "measurements": ["ab" * 48],
            "regions": ["eu", "us"], "keks": ["*"], "producers": ["*"], **field}
    policy = ReleasePolicy.from_mapping({"version": 1, "rules": [rule]})
    maa = _claims("maa")
    us_vm = dataclasses.replace(maa, raw={"sealbeam-vm-location": "eastus"}, platform={
        **maa.platform, "compliance_status": "azure-compliant-cvm"})
    assert policy.evaluate_release(us_vm, "k", "us", "acme").allowed
    denied = policy.evaluate_release(us_vm, "k", "eu", "acme")
    assert denied.reason == ("worker location 'eastus' not allowed for region 'eu' by rule "
                             "azure (allowed: europe-west4)")
