"""The release policy: grammar validation and every reason a decision can give."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from keybroker.attestation.claims import Claims
from keybroker.policy import MAX_POLICY_BYTES, Decision, PolicyFormatError, ReleasePolicy

GOOD = "aa" * 48
OTHER = "bb" * 48
EU_KEK = "local://keyring/eu/kek-1"


def claims(**changes: Any) -> Claims:
    base = Claims(
        tee="sev-snp",
        report_version=2,
        debug=False,
        measurement=GOOD,
        report_data=bytes(64),
        product="Milan",
        signing_key="vcek",
        tcb={"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
        simulated=False,
    )
    return dataclasses.replace(base, **changes)


def rule(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": "workers",
        "tee": ["sev-snp"],
        "measurements": [GOOD],
        "min_tcb": {"bootloader": 3, "snp": 8},
        "regions": ["eu"],
        "keks": ["local://keyring/eu/*"],
        "named_keys": ["pseudonym/acme"],
        "producers": ["acme", "globex-*"],
    }
    document.update(changes)
    return document


def policy(*rules: dict[str, Any], allow_simulated: bool = False) -> ReleasePolicy:
    return ReleasePolicy.from_mapping(
        {"version": 1, "allow_simulated": allow_simulated, "rules": list(rules)}
    )


def test_allows_matching_evidence_and_names_the_rule() -> None:
    decision = policy(rule()).evaluate_attestation(claims())
    assert decision == Decision(True, "evidence accepted by rule workers", "workers")
    release = policy(rule()).evaluate_release(claims(), EU_KEK, "eu", "globex-2")
    assert release.allowed and release.rule == "workers"
    named = policy(rule()).evaluate_named(claims(), "pseudonym/acme")
    assert named.allowed and named.rule == "workers"


def test_denies_by_default() -> None:
    decision = policy().evaluate_attestation(claims())
    assert not decision.allowed
    assert "no rules" in decision.reason
    assert policy().evaluate_release(claims(), EU_KEK, "eu", "acme").allowed is False


@pytest.mark.parametrize(
    ("evidence", "reason"),
    [
        (claims(measurement=OTHER), "measurement not allowed by rule workers"),
        (claims(debug=True), "debug enabled, not allowed by rule workers"),
        (claims(tee="tdx"), "tee 'tdx' not allowed by rule workers"),
        (
            claims(tcb={"bootloader": 2, "tee": 0, "snp": 8, "microcode": 115}),
            "tcb bootloader 2 below minimum 3 of rule workers",
        ),
        (claims(tcb={"bootloader": 3}), "tcb component 'snp' missing from evidence"),
    ],
)
def test_attestation_denial_reasons(evidence: Claims, reason: str) -> None:
    decision = policy(rule()).evaluate_attestation(evidence)
    assert not decision.allowed
    assert reason in decision.reason
    assert decision.rule is None


def test_every_failed_check_is_reported_at_once() -> None:
    decision = policy(rule()).evaluate_attestation(claims(measurement=OTHER, debug=True))
    assert "measurement not allowed" in decision.reason
    assert "debug enabled" in decision.reason


def test_debug_is_allowed_only_where_a_rule_says_so() -> None:
    assert policy(rule(debug=True)).evaluate_attestation(claims(debug=True)).allowed


@pytest.mark.parametrize(
    ("kek", "region", "producer", "reason"),
    [
        (EU_KEK, "us", "acme", "region 'us' not allowed by rule workers"),
        ("local://keyring/us/kek-1", "eu", "acme", "kek 'local://keyring/us/kek-1' not allowed"),
        (EU_KEK, "eu", "mallory", "producer 'mallory' not allowed by rule workers"),
    ],
)
def test_release_denial_reasons(kek: str, region: str, producer: str, reason: str) -> None:
    decision = policy(rule()).evaluate_release(claims(), kek, region, producer)
    assert not decision.allowed
    assert reason in decision.reason


def test_release_for_evidence_no_rule_accepts_gives_the_attestation_reason() -> None:
    decision = policy(rule()).evaluate_release(claims(debug=True), EU_KEK, "eu", "acme")
    assert not decision.allowed and "debug enabled" in decision.reason


def test_named_key_denial_reason() -> None:
    decision = policy(rule()).evaluate_named(claims(), "pseudonym/globex")
    assert not decision.allowed
    assert "named key 'pseudonym/globex' not allowed by rule workers" in decision.reason


def test_a_second_rule_can_allow_what_the_first_does_not() -> None:
    two = policy(rule(), rule(name="us-workers", regions=["us"], keks=["local://keyring/us/*"]))
    decision = two.evaluate_release(claims(), "local://keyring/us/kek-1", "us", "acme")
    assert decision.allowed and decision.rule == "us-workers"


def test_simulated_evidence_needs_both_switches() -> None:
    simulated = claims(simulated=True)
    globally_off = policy(rule(allow_simulated=True), allow_simulated=False)
    decision = globally_off.evaluate_attestation(simulated)
    assert not decision.allowed
    assert "simulated evidence not allowed (policy allow_simulated: false)" in decision.reason
    rule_off = policy(rule(), allow_simulated=True).evaluate_attestation(simulated)
    assert not rule_off.allowed
    assert "simulated evidence not allowed by rule workers" in rule_off.reason
    both = policy(rule(allow_simulated=True), allow_simulated=True)
    assert both.evaluate_attestation(simulated).allowed


def test_wildcard_measurement_matches_simulated_evidence_only() -> None:
    wildcard = policy(rule(allow_simulated=True, measurements=["*"]), allow_simulated=True)
    assert wildcard.evaluate_attestation(claims(simulated=True, measurement=OTHER)).allowed
    hardware = wildcard.evaluate_attestation(claims(measurement=OTHER))
    assert not hardware.allowed and "measurement not allowed" in hardware.reason


def test_measurements_are_compared_case_insensitively() -> None:
    assert policy(rule(measurements=[GOOD.upper()])).evaluate_attestation(claims()).allowed


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ([], "top level"),
        ({"version": 2, "rules": []}, "version"),
        ({"version": 1, "rules": [], "extra": 1}, "unknown field"),
        ({"version": 1, "allow_simulated": "yes"}, "allow_simulated"),
        ({"version": 1, "rules": {}}, "rules"),
        ({"version": 1, "rules": [rule(name="")]}, r"rules\[0\].name"),
        ({"version": 1, "rules": [rule(tee=["sgx"])]}, r"rules\[0\].tee\[0\]"),
        ({"version": 1, "rules": [rule(tee=[])]}, r"rules\[0\].tee"),
        ({"version": 1, "rules": [rule(measurements=[])]}, r"rules\[0\].measurements"),
        ({"version": 1, "rules": [rule(measurements=["xyz"])]}, r"rules\[0\].measurements\[0\]"),
        ({"version": 1, "rules": [rule(measurements=["*"])]}, "allow_simulated: true"),
        ({"version": 1, "rules": [rule(min_tcb={"snp": -1})]}, r"rules\[0\].min_tcb.snp"),
        ({"version": 1, "rules": [rule(min_tcb={"snp": True})]}, r"rules\[0\].min_tcb.snp"),
        ({"version": 1, "rules": [rule(regions=["EU!"])]}, r"rules\[0\].regions\[0\]"),
        ({"version": 1, "rules": [rule(debug="no")]}, r"rules\[0\].debug"),
        ({"version": 1, "rules": [rule(keks=[1])]}, r"rules\[0\].keks\[0\]"),
        ({"version": 1, "rules": [rule(mesurements=[GOOD])]}, "mesurements"),
        ({"version": 1, "rules": [rule(), rule()]}, "duplicate rule names"),
    ],
)
def test_invalid_policies_name_the_field(document: object, field: str) -> None:
    with pytest.raises(PolicyFormatError, match=field):
        ReleasePolicy.from_mapping(document)


def test_load_from_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        f"""
version: 1
allow_simulated: false
rules:
  - name: demo-workers
    tee: [sev-snp]
    debug: false
    measurements: ["{GOOD}"]
    min_tcb: {{bootloader: 0, tee: 0, snp: 0, microcode: 0}}
    regions: [eu, us]
    keks: ["local://keyring/eu/*", "local://keyring/us/*"]
    named_keys: ["pseudonym/acme"]
    producers: ["*"]
"""
    )
    loaded = ReleasePolicy.load(path)
    assert loaded.allow_simulated is False
    assert [r.name for r in loaded.rules] == ["demo-workers"]
    assert loaded.evaluate_release(claims(), "local://keyring/us/kek-1", "us", "x").allowed


def test_load_refuses_bad_yaml_oversize_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: [1\n")
    with pytest.raises(PolicyFormatError, match="not valid YAML"):
        ReleasePolicy.load(path)
    path.write_text("#" * (MAX_POLICY_BYTES + 1))
    with pytest.raises(PolicyFormatError, match="over the limit"):
        ReleasePolicy.load(path)
    with pytest.raises(PolicyFormatError, match="cannot read"):
        ReleasePolicy.load(tmp_path / "absent.yaml")
