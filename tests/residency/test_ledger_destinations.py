"""Every output key's ledger entry names its region's sink and where preflight found it.

A batch run with a residency map of ``file://`` sinks (preflight reads them as ``local``)
and one from ``--output_root`` (``unverified``): afterwards each of the run's ``generate``
entries in the broker's hash-chained ledger carries ``destination`` = its region's sink, that
location and whether it was verified. A malformed destination is refused by the client and,
sent raw, by the broker with a typed error, before anything is written to the ledger.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from keybroker.client import BrokerRequestError
from keybroker.ledger import AuditLedger
from pipelines.batch import check_reconciled, run_batch
from pipelines.preflight.report import PreflightReport, SinkCheck
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pipelines.helpers import sealed_partner_files
from tests.support.broker import attest_simulated_worker, ledger_entries
from transforms import TransformConfigError
from transforms.session import SpecBoundBrokerClient, output_destinations

RECORDS = 24
REGIONS = ("eu", "us")


@pytest.fixture(scope="module")
def sealed_input(broker: BrokerEnv, tmp_path_factory: pytest.TempPathFactory) -> str:
    work = tmp_path_factory.mktemp("input")
    sealed_partner_files(broker, work, RECORDS)
    return str(work / "sealed" / "*.sealed")


def _run(broker: BrokerEnv, sealed_input: str, **flags: str):
    every = {"input": sealed_input, "broker_url": broker.url, "tee": "simulated-sev-snp",
             "dev_tee_dir": str(broker.dev_tee_dir), "regions": ",".join(REGIONS), **flags}
    summary = run_batch(PipelineOptions(flags=[f"--{k}={v}" for k, v in every.items()]))
    check_reconciled(summary)
    return summary


def _destinations_after(broker: BrokerEnv, seq: int) -> dict[str, list[dict[str, object]]]:
    """The ``destination`` of each granted ``generate`` entry after ``seq``, by region."""
    with AuditLedger(broker.settings.ledger_path, read_only=True) as ledger:
        assert ledger.verify().ok
        found: dict[str, list[dict[str, object]]] = {}
        for entry in ledger.entries():
            if entry.seq > seq and entry.event == "generate" and entry.decision == "granted":
                found.setdefault(str(entry.details["region"]), []).append(
                    dict(entry.details["destination"]))   # type: ignore[call-overload]
    return found


def _head(broker: BrokerEnv) -> int:
    return len(ledger_entries(broker.settings))


def test_a_mapped_run_records_each_region_sink_and_its_verified_location(
        broker: BrokerEnv, sealed_input: str, tmp_path: Path) -> None:
    sinks = {r: f"file://{tmp_path}/{r}-out" for r in REGIONS}
    regions = {r: {"locations": ["local"], "kek": broker.settings.region_keks[r],
                   "local_kek": True, "sink": sinks[r], "dead_letter_sink": f"file://{tmp_path}/{r}-dl",
                   "worker_locations": ["local"]} for r in REGIONS}
    residency = tmp_path / "residency.yaml"
    residency.write_text(json.dumps({"version": 1, "regions": regions,
                                     "unrouted_dead_letter_sink": f"file://{tmp_path}/q"}))
    before = _head(broker)
    summary = _run(broker, sealed_input, residency_map=str(residency))
    assert summary.output_files > 0 and sorted(summary.outputs_by_region) == list(REGIONS)
    found = _destinations_after(broker, before)
    assert sorted(found) == list(REGIONS)
    for region in REGIONS:
        assert found[region] and all(d == {"sink": sinks[region], "location": "local",
                                           "verified": True} for d in found[region])
        assert any((tmp_path / f"{region}-out").rglob("part-*"))
    # The summary's preflight says the same as the ledger.
    preflight = summary.residency["preflight"]
    assert {c["region"]: c["url"] for c in preflight["sinks"]     # type: ignore[index]
            if c["role"] == "sink"} == sinks


def test_an_output_root_run_records_its_sinks_as_unverified(
        broker: BrokerEnv, sealed_input: str, tmp_path: Path) -> None:
    before = _head(broker)
    _run(broker, sealed_input, output_root=str(tmp_path / "out"))
    found = _destinations_after(broker, before)
    assert sorted(found) == list(REGIONS)
    for region in REGIONS:
        for destination in found[region]:
            assert destination["sink"] == f"file://{tmp_path}/out/{region}"
            assert destination["location"] == "unverified"
            assert destination["verified"] is False


def test_preflight_destinations_carry_the_store_location() -> None:
    report = PreflightReport((
        SinkCheck("eu", "sink", "gs://sb-eu-out/features", "EU", "multi-region",
                  ("europe-west1", "europe-west4"), "cmek"),
        SinkCheck("eu", "dead_letter_sink", "gs://sb-eu-dl/dl", "EUROPE-WEST4", "region",
                  ("europe-west4",), "cmek"),
        SinkCheck("us", "sink", "azfs://acme/us-out/f", "eastus", "Standard_LRS",
                  ("eastus",), "cmk")))
    assert report.destinations() == {
        "eu": {"sink": "gs://sb-eu-out/features", "location": "EU", "verified": True},
        "us": {"sink": "azfs://acme/us-out/f", "location": "eastus", "verified": True}}
    assert output_destinations(report.destinations()) == (
        ("eu", "gs://sb-eu-out/features", "EU", True),
        ("us", "azfs://acme/us-out/f", "eastus", True))
    with pytest.raises(TransformConfigError, match=r"region 'eu'.*destination\.location"):
        output_destinations({"eu": {"sink": "gs://b/p", "location": "EU\n", "verified": True}})


BAD_DESTINATIONS = (
    ({"sink": "http://example.invalid/x", "location": "EU", "verified": True}, "sink"),
    ({"sink": "gs://b/p\r\nx", "location": "EU", "verified": True}, "sink"),
    ({"sink": "gs://b/p", "location": "EU west", "verified": True}, "location"),
    ({"sink": "gs://b/p", "location": "-EU", "verified": True}, "location"),
)
TOO_LONG = (
    ({"sink": "gs://b/" + "p" * 1020, "location": "EU", "verified": True}, "sink"),
    ({"sink": "gs://b/p", "location": "E" * 65, "verified": True}, "location"),
    ({"sink": "gs://b/p", "location": "EU"}, "verified"),
    ({"sink": "gs://b/p", "location": "EU", "verified": True, "extra": "x"}, "extra"),
)


def test_a_malformed_destination_is_refused_before_the_ledger(broker: BrokerEnv) -> None:
    client = broker.client()
    _, session = attest_simulated_worker(client, broker.settings)
    good = {"sink": "gs://sb-eu-out/features", "location": "EUROPE-WEST4", "verified": True}
    _, wrapped = client.generate(session, "eu", "acme", destination=good)
    [entry] = [e for e in ledger_entries(broker.settings, "generate")
               if e.details.get("key_id") == wrapped.key_id]
    assert entry.decision == "granted" and entry.details["destination"] == good

    for bad, field in (*BAD_DESTINATIONS, *TOO_LONG[:2]):
        with pytest.raises(BrokerRequestError, match=f"destination.{field}"):
            client.generate(session, "eu", "acme", destination=bad)

    body = {"session_id": session.id, "region": "eu", "producer_id": "acme"}
    generates = len(ledger_entries(broker.settings, "generate"))
    for bad, field in BAD_DESTINATIONS:
        refused = httpx.post(f"{broker.url}/v1/keys/generate", json={**body, "destination": bad})
        assert refused.status_code == 400, bad
        assert refused.json()["error"] == "bad_request"
        assert f"destination.{field}" in refused.json()["reason"]
    for index, (bad, field) in enumerate(TOO_LONG):  # past the schema: refused before the service
        refused = httpx.post(f"{broker.url}/v1/keys/generate", json={**body, "destination": bad})
        # An over-long field is a 400 like every other bound; a missing or unknown one a 422.
        expected = (400, "bad_request") if index < 2 else (422, "invalid_request")
        assert (refused.status_code, refused.json()["error"]) == expected, bad
        assert field in refused.json()["reason"]
    # No key was made: each refusal the service saw is a denial of the session, without the
    # refused destination in it.
    after = ledger_entries(broker.settings, "generate")[generates:]
    assert len(after) == len(BAD_DESTINATIONS)
    assert all(e.decision == "denied" and e.details["status"] == 400
               and "destination" not in e.details for e in after)


class _OldClient:
    """A broker client from before ``destination``: it must be called without it."""

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []

    def generate(self, session: object, region: str, producer_id: str, *,
                 spec_fingerprint: str | None = None) -> tuple[bytes, object]:
        self.calls.append({"region": region, "spec_fingerprint": spec_fingerprint})
        return b"", None


class _NewClient(_OldClient):
    def generate(self, session: object, region: str, producer_id: str, *,   # type: ignore[override]
                 spec_fingerprint: str | None = None,
                 destination: dict[str, object] | None = None) -> tuple[bytes, object]:
        self.calls.append({"region": region, "destination": destination})
        return b"", None


def test_the_worker_sends_a_destination_only_for_its_region_and_to_clients_that_take_it(
) -> None:
    destinations = output_destinations(
        {"eu": {"sink": "gs://sb-eu-out/f", "location": "EU", "verified": True}})
    new = _NewClient()
    bound = SpecBoundBrokerClient(new, "ab" * 32, destinations)   # type: ignore[arg-type]
    bound.generate("s", "eu", "acme")
    bound.generate("s", "us", "acme")
    assert new.calls == [
        {"region": "eu", "destination": {"sink": "gs://sb-eu-out/f", "location": "EU",
                                         "verified": True}},
        {"region": "us", "destination": None}]
    old = _OldClient()
    SpecBoundBrokerClient(old, "ab" * 32, destinations).generate(  # type: ignore[arg-type]
        "s", "eu", "acme")
    assert old.calls == [{"region": "eu", "spec_fingerprint": "ab" * 32}]
