"""Azure workers' location: only a claim the operator's MAA policy issues, named in the rule.

Tokens are minted here and verified by the real ``MaaVerifier`` (keys served on 127.0.0.1);
the release policy then reads the configured top-level claim. A location the guest could
write (``x-ms-runtime``, the client payload) or an unsigned platform field is never read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from keybroker.attestation.claims import Claims
from keybroker.attestation.jwks import JwksCache, http_getter
from keybroker.attestation.maa import MaaVerifier
from keybroker.policy import PolicyFormatError, ReleasePolicy
from keybroker.policy.location import attested_location
from tests.attestation_cloud.support import (
    DocumentServer,
    ManualClock,
    jwks_document,
    mint_token,
    new_rsa_key,
    random_report_data,
)
from tests.attestation_cloud.test_tokens import MAA_ISSUER, maa_payload

SIGNING_KEY = new_rsa_key()
CLAIM = "sealbeam-vm-location"


@pytest.fixture
def maa() -> Iterator[tuple[MaaVerifier, ManualClock]]:
    with DocumentServer() as server:
        server.documents["/certs"] = jwks_document({"maa-1": SIGNING_KEY})
        clock = ManualClock()
        keys = JwksCache(jwks_uri=f"{server.url}/certs",
                         getter=http_getter(allow_loopback_http=True), clock=clock,
                         min_refresh_seconds=60)
        yield MaaVerifier(MAA_ISSUER, keys=keys, clock=clock), clock


def _policy(**extra: Any) -> ReleasePolicy:
    rule = {"name": "azure", "tee": ["maa"], "measurements": ["ab" * 48],
            "regions": ["eu", "us"], "keks": ["*"], "producers": ["*"],
            "worker_locations": {"eu": ["westeurope", "northeurope"], "us": ["eastus"]},
            **extra}
    return ReleasePolicy.from_mapping({"version": 1, "rules": [rule]})


def _verified(maa: tuple[MaaVerifier, ManualClock], **top_level: Any) -> Claims:
    verifier, clock = maa
    report_data = random_report_data()
    payload = {**maa_payload(clock, report_data), **top_level}
    return verifier.evaluate(mint_token(SIGNING_KEY, payload, kid="maa-1"), report_data,
                             endorsements={})


def test_the_configured_maa_claim_is_the_location(maa) -> None:
    policy = _policy(maa_location_claim=CLAIM)
    eu_vm = _verified(maa, **{CLAIM: "WestEurope"})
    us_vm = _verified(maa, **{CLAIM: "eastus"})
    assert attested_location(eu_vm, CLAIM) == "westeurope"
    assert policy.evaluate_release(eu_vm, "local://eu", "eu", "acme").allowed
    denied = policy.evaluate_release(us_vm, "local://eu", "eu", "acme")
    assert not denied.allowed
    assert denied.reason == ("worker location 'eastus' not allowed for region 'eu' by rule "
                             "azure (allowed: westeurope, northeurope)")
    assert policy.evaluate_release(us_vm, "local://us", "us", "acme").allowed


def test_without_the_claim_or_its_configuration_azure_workers_are_denied(maa) -> None:
    unconfigured = _policy()
    eu_vm = _verified(maa, **{CLAIM: "westeurope"})
    assert attested_location(eu_vm) is None
    assert unconfigured.evaluate_release(eu_vm, "local://eu", "eu", "acme").reason == (
        "worker location not attested by the maa evidence (no maa_location_claim configured); "
        "rule azure requires one of westeurope, northeurope for region 'eu'")
    configured = _policy(maa_location_claim=CLAIM)
    no_claim = _verified(maa)
    assert "worker location not attested by the maa evidence; rule azure" in (
        configured.evaluate_release(no_claim, "local://eu", "eu", "acme").reason)
    not_a_location = _verified(maa, **{CLAIM: ["westeurope"]})
    assert attested_location(not_a_location, CLAIM) is None


def test_what_the_guest_sends_is_never_its_location(maa) -> None:
    verifier, clock = maa
    report_data = random_report_data()
    payload = maa_payload(clock, report_data)
    payload["x-ms-isolation-tee"]["x-ms-runtime"][CLAIM] = "westeurope"   # guest's own data
    payload["x-ms-isolation-tee"][CLAIM] = "westeurope"
    claims = verifier.evaluate(mint_token(SIGNING_KEY, payload, kid="maa-1"), report_data,
                               endorsements={})
    assert attested_location(claims, CLAIM) is None
    unsigned = Claims(tee="azure-cvm", report_version=0, debug=False, measurement="ab" * 48,
                      report_data=bytes(64), product=None, signing_key=None, tcb={},
                      simulated=False, platform={"location": "westeurope"})
    assert attested_location(unsigned, CLAIM) is None


@pytest.mark.parametrize(("extra", "message"), [
    ({"maa_location_claim": "x-ms-azurevm-vmid"}, "is a claim MAA or JWT defines"),
    ({"maa_location_claim": "iss"}, "is a claim MAA or JWT defines"),
    ({"maa_location_claim": "a b"}, "expected a claim name"),
    ({"maa_location_claim": 3}, "expected a claim name"),
])
def test_bad_maa_location_claim(extra: dict, message: str) -> None:
    with pytest.raises(PolicyFormatError, match=message):
        _policy(**extra)


def test_the_claim_needs_worker_locations_and_an_maa_rule() -> None:
    with pytest.raises(PolicyFormatError, match="only with worker_locations"):
        ReleasePolicy.from_mapping({"version": 1, "rules": [{
            "name": "azure", "tee": ["maa"], "measurements": ["ab" * 48], "regions": ["eu"],
            "keks": ["*"], "producers": ["*"], "maa_location_claim": CLAIM}]})
    with pytest.raises(PolicyFormatError, match="applies to tee maa only"):
        ReleasePolicy.from_mapping({"version": 1, "rules": [{
            "name": "cs", "tee": ["confidential-space"], "measurements": ["ab" * 48],
            "regions": ["eu"], "keks": ["*"], "producers": ["*"],
            "worker_locations": {"eu": ["europe-west4"]}, "maa_location_claim": CLAIM}]})
