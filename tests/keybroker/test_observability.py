"""The broker's /metrics (parsed with prometheus_client's own parser), its structured access
log and its packaged /docs."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from envelope import dek_wrap_aad
from keybroker.client import BrokerClient, BrokerDeniedError
from keybroker.kms.local import LocalKeyring
from keybroker.logs import configure_logging
from keybroker.service.observability import ACCESS_LOGGER
from keybroker.service.server import RunningBroker
from tests.support.broker import attest_simulated_worker, ledger_entries, start_broker


def _eu_only(document: dict[str, Any]) -> None:
    for rule in document["rules"]:
        rule["regions"] = ["eu"]
        rule["keks"] = ["local://keyring/eu/*"]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    with start_broker(tmp_path_factory.mktemp("observed") / "state",
                      policy_edit=_eu_only) as running:
        yield running


def scrape(broker: RunningBroker) -> dict[str, list]:
    response = httpx.get(f"{broker.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples
            for family in text_string_to_metric_families(response.text)}


def _value(samples: list, name: str, **labels: str) -> float:
    found = [s.value for s in samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(found)


def test_grants_denials_latency_ledger_and_cache(broker: RunningBroker) -> None:
    keyring = LocalKeyring.open(broker.settings.keyring_path)
    with BrokerClient(broker.url) as client:
        _, session = attest_simulated_worker(client, broker.settings)
        wrapped = keyring.wrap(keyring.kek_for_region("eu"), bytes(range(32)),
                               dek_wrap_aad("eu", "acme"))
        client.release(session, wrapped, "eu", "acme")
        client.release(session, wrapped, "eu", "acme")  # the second comes from the DEK cache
        foreign = keyring.wrap(keyring.kek_for_region("us"), bytes(32),
                               dek_wrap_aad("us", "acme"))
        with pytest.raises(BrokerDeniedError):
            client.release(session, foreign, "us", "acme")  # the policy allows eu only
    metrics = scrape(broker)

    decisions = metrics["sealbeam_broker_decisions"]
    assert _value(decisions, "sealbeam_broker_decisions_total", event="attest",
                  decision="granted", tee="sev-snp") == 1
    assert _value(decisions, "sealbeam_broker_decisions_total", event="release",
                  decision="granted", tee="sev-snp") == 2
    denied = [s for s in decisions if s.labels["decision"] == "denied"]
    assert denied and all(s.labels["reason"] for s in denied)
    ledger = ledger_entries(broker.settings)
    granted_or_denied = [e for e in ledger if e.decision in ("granted", "denied")]
    assert sum(s.value for s in decisions if s.name.endswith("_total")) == len(granted_or_denied)

    latency = metrics["sealbeam_broker_request_duration_seconds"]
    assert _value(latency, "sealbeam_broker_request_duration_seconds_count",
                  route="/v1/keys/release", method="POST", status="200") == 2
    assert _value(latency, "sealbeam_broker_request_duration_seconds_count",
                  route="/v1/keys/release", method="POST", status="403") == 1

    assert _value(metrics["sealbeam_broker_ledger_entries"],
                  "sealbeam_broker_ledger_entries") == len(ledger)
    assert _value(metrics["sealbeam_broker_dek_cache_hits"],
                  "sealbeam_broker_dek_cache_hits_total") >= 1
    assert _value(metrics["sealbeam_broker_dek_cache_kms_calls"],
                  "sealbeam_broker_dek_cache_kms_calls_total") >= 1
    assert "sealbeam_broker_dek_cache_entries" in metrics


def test_access_log_is_structured(broker: RunningBroker) -> None:
    stream = io.StringIO()
    handler = configure_logging("info", "json", stream=stream)
    try:
        httpx.get(f"{broker.url}/v1/health")
        deadline = time.monotonic() + 5  # the record is written just after the response
        while ACCESS_LOGGER not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        logging.getLogger().removeHandler(handler)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    [access] = [r for r in records if r["logger"] == ACCESS_LOGGER and r["route"] == "/v1/health"]
    assert access["method"] == "GET" and access["status"] == 200
    assert access["duration_ms"] >= 0 and access["client"].startswith("127.0.0.1:")


def test_docs_are_served_from_the_package(broker: RunningBroker) -> None:
    page = httpx.get(f"{broker.url}/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    script = httpx.get(f"{broker.url}/docs/api-docs.js")
    assert script.status_code == 200 and "/openapi.json" in script.text
    for body in (page.text, script.text):
        assert "http://" not in body and "https://" not in body  # nothing from a CDN
    assert httpx.get(f"{broker.url}/redoc").status_code == 404
    spec = httpx.get(f"{broker.url}/openapi.json").json()
    assert "/metrics" not in spec["paths"] and "/v1/keys/release" in spec["paths"]
