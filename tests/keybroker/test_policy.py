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


# -- every TEE type -------------------------------------------------------------------------
# Claims shaped like each verifier's (keybroker/attestation/*): the platform keys matter.
MRTD = "11" * 48
IMAGE = "cd" * 32


def snp_claims(**platform_changes: Any) -> Claims:
    platform = {"smt": True, "migration_agent": False, "vmpl": 0, "host_data": "00" * 32,
                "id_key_digest": "00" * 48}
    platform.update(platform_changes)
    return claims(platform=platform)


def tdx_claims(*, tcb_status: str | None = "UpToDate", tee: str = "tdx",
               **changes: Any) -> Claims:
    platform = {"rtmr0": "50" * 48, "rtmr1": "51" * 48, "rtmr2": "52" * 48, "rtmr3": "53" * 48,
                "mrconfigid": "22" * 48, "mrowner": "33" * 48, "tcb_status": tcb_status}
    if tee != "tdx":
        platform["hw"] = "tdx"
    platform.update(changes.pop("platform", {}))
    return dataclasses.replace(
        claims(), tee=tee, measurement=MRTD, product=None, signing_key="pck",
        tcb={"tdx_module_svn": 3, "pce_svn": 11}, platform=platform, tcb_status=None, **changes)


def maa_claims(**platform_changes: Any) -> Claims:
    platform = {"hw": "sev-snp", "attestation_type": "sevsnpvm",
                "compliance_status": "azure-compliant-cvm",
                "vm_configuration": {"secure-boot": True, "console-enabled": False},
                "smt_allowed": True, "migration_allowed": False, "vmpl": 0,
                "host_data": "00" * 32, "id_key_digest": "00" * 48}
    platform.update(platform_changes)
    return dataclasses.replace(claims(), tee="maa", report_version=0, product=None,
                               signing_key=None, platform=platform)


def azure_claims(**platform_changes: Any) -> Claims:
    platform = {"hw": "sev-snp", "smt": True, "migration_agent": False, "vmpl": 0,
                "host_data": "00" * 32, "id_key_digest": "00" * 48,
                "vm_configuration": {"secure-boot": True, "console-enabled": False}}
    platform.update(platform_changes)
    return claims(tee="azure-cvm", platform=platform)


def cs_claims(**platform_changes: Any) -> Claims:
    platform = {"hw": "sev-snp", "dbgstat": "disabled-since-boot",
                "support_attributes": ["LATEST", "STABLE", "USABLE"]}
    platform.update(platform_changes)
    return dataclasses.replace(claims(), tee="confidential-space", report_version=0,
                               measurement=IMAGE, product=None, signing_key=None,
                               tcb={"swversion": 240500}, platform=platform)


def tdx_rule(**changes: Any) -> dict[str, Any]:
    return rule(**{"tee": ["tdx"], "measurements": [MRTD], "min_tcb": {"tdx_module_svn": 3},
                   **changes})


def denied_because(decision: Decision, reason: str) -> bool:
    return not decision.allowed and reason in decision.reason


def test_claims_lift_tcb_status_from_platform() -> None:
    lifted = tdx_claims()
    assert lifted.tcb_status == "UpToDate" and lifted.to_json()["tcb_status"] == "UpToDate"
    assert claims().tcb_status is None and claims().to_json()["tcb_status"] is None
    with pytest.raises(ValueError, match="disagrees"):
        dataclasses.replace(lifted, tcb_status="OutOfDate")
    with pytest.raises(ValueError, match="tcb_status"):
        claims(tcb_status="Up To Date")


def test_tdx_tcb_status_defaults_to_up_to_date_only() -> None:
    tdx = policy(tdx_rule())
    assert tdx.evaluate_attestation(tdx_claims()).allowed
    assert denied_because(
        tdx.evaluate_attestation(tdx_claims(tcb_status="OutOfDate")),
        "tcb_status 'OutOfDate' not allowed by rule workers (allowed: UpToDate)")
    assert denied_because(
        tdx.evaluate_attestation(tdx_claims(tcb_status=None)),
        "tcb_status unknown (no TDX collateral), not allowed by rule workers")


def test_tdx_tcb_status_list_and_unknown_switch() -> None:
    lenient = policy(tdx_rule(tcb_status=["UpToDate", "SWHardeningNeeded"],
                              allow_unknown_tcb=True))
    assert lenient.evaluate_attestation(tdx_claims(tcb_status="SWHardeningNeeded")).allowed
    assert lenient.evaluate_attestation(tdx_claims(tcb_status=None)).allowed
    assert not lenient.evaluate_attestation(tdx_claims(tcb_status="OutOfDate")).allowed


def test_tdx_tcb_status_applies_to_azure_cvm_on_tdx_but_not_maa() -> None:
    both = policy(tdx_rule(tee=["tdx", "azure-cvm", "maa"], compliance_status=["ok"]))
    azure = tdx_claims(tee="azure-cvm", tcb_status="OutOfDate")
    assert denied_because(both.evaluate_attestation(azure), "tcb_status 'OutOfDate'")
    maa = tdx_claims(tee="maa", tcb_status=None,
                     platform={"compliance_status": "ok", "attestation_type": "tdxvm"})
    assert both.evaluate_attestation(maa).allowed  # MAA judged the TCB; no status to read


@pytest.mark.parametrize(
    ("changes", "platform", "reason"),
    [
        ({"rtmrs": {"rtmr1": ["51" * 48], "rtmr2": ["aa" * 48]}}, {}, "rtmr2 not allowed by rule"),
        ({"mrconfigid": ["ab" * 48]}, {}, "mrconfigid not allowed by rule workers"),
        ({"mrowner": ["ab" * 48]}, {}, "mrowner not allowed by rule workers"),
        ({"mrowner": ["33" * 48]}, {"mrowner": None}, "mrowner missing from evidence"),
    ],
)
def test_tdx_register_allow_lists(changes: dict, platform: dict, reason: str) -> None:
    decision = policy(tdx_rule(**changes)).evaluate_attestation(tdx_claims(platform=platform))
    assert denied_because(decision, reason)


def test_tdx_register_allow_lists_accept_listed_values_in_any_case() -> None:
    listed = tdx_rule(rtmrs={"rtmr0": ["50" * 48], "rtmr3": ["AA" * 48, "53" * 48]},
                      mrconfigid=["22" * 48], mrowner=["33" * 48])
    assert policy(listed).evaluate_attestation(tdx_claims()).allowed


@pytest.mark.parametrize(
    ("changes", "evidence", "reason"),
    [
        ({"smt": False}, snp_claims(), "smt enabled, not allowed by rule workers"),
        ({}, snp_claims(migration_agent=True),
         "migration agent allowed by the guest policy, not allowed by rule workers"),
        ({"migration_agent": False}, claims(), "migration_agent missing from evidence"),
        ({"max_vmpl": 0}, snp_claims(vmpl=2), "vmpl 2 above max_vmpl 0 of rule workers"),
        ({"host_data": ["11" * 32]}, snp_claims(), "host_data not allowed by rule workers"),
        ({"id_key_digest": ["11" * 48]}, snp_claims(), "id_key_digest not allowed by rule"),
        ({"exclude_products": ["Milan"]}, snp_claims(), "product 'Milan' excluded by rule"),
        ({"min_tcb": {"Genoa": {"snp": 1}}}, snp_claims(), "no min_tcb for product 'Milan'"),
        ({"min_tcb": {"Milan": {"snp": 9}, "Genoa": {"snp": 1}}}, snp_claims(),
         "tcb snp 8 below minimum 9 of rule workers"),
    ],
)
def test_snp_checks(changes: dict, evidence: Claims, reason: str) -> None:
    assert denied_because(policy(rule(**changes)).evaluate_attestation(evidence), reason)


def test_snp_checks_pass_when_met() -> None:
    strict = rule(smt=True, migration_agent=False, max_vmpl=0, host_data=["00" * 32],
                  id_key_digest=["00" * 48], exclude_products=["Genoa", "Turin"],
                  min_tcb={"Milan": {"bootloader": 3, "snp": 8}, "Genoa": {"snp": 20}})
    assert policy(strict).evaluate_attestation(snp_claims()).allowed
    assert policy(rule(migration_agent=True)).evaluate_attestation(
        snp_claims(migration_agent=True)).allowed


def test_snp_checks_read_maa_names_and_skip_other_hardware() -> None:
    maa_rule = rule(tee=["maa"], smt=False, min_tcb={}, max_vmpl=0)
    assert denied_because(policy(maa_rule).evaluate_attestation(maa_claims()),
                          "smt enabled, not allowed")
    assert policy(maa_rule).evaluate_attestation(maa_claims(smt_allowed=False)).allowed
    assert denied_because(policy(rule(tee=["maa"], min_tcb={"Milan": {"snp": 1}}))
                          .evaluate_attestation(maa_claims()), "product missing from evidence")
    mixed = policy(tdx_rule(tee=["tdx", "sev-snp"], smt=False, host_data=["11" * 32]))
    assert mixed.evaluate_attestation(tdx_claims()).allowed


def test_hardware_allow_list() -> None:
    only_snp = policy(rule(tee=["azure-cvm"], hardware=["sev-snp"]))
    assert only_snp.evaluate_attestation(azure_claims()).allowed
    assert denied_because(only_snp.evaluate_attestation(azure_claims(hw="tdx")),
                          "hardware 'tdx' not allowed by rule workers")


def test_azure_vm_configuration() -> None:
    secure = policy(rule(tee=["azure-cvm"], vm_configuration={"secure-boot": True,
                                                               "console-enabled": False}))
    assert secure.evaluate_attestation(azure_claims()).allowed
    console = azure_claims(vm_configuration={"secure-boot": True, "console-enabled": True})
    assert denied_because(secure.evaluate_attestation(console),
                          "vm_configuration console-enabled is true, rule workers requires false")
    assert denied_because(secure.evaluate_attestation(azure_claims(vm_configuration=None)),
                          "vm_configuration missing from evidence")


def test_maa_compliance_defaults_to_azure_compliant_cvm() -> None:
    maa = policy(rule(tee=["maa"]))
    assert maa.evaluate_attestation(maa_claims()).allowed
    assert denied_because(
        maa.evaluate_attestation(maa_claims(compliance_status=None)),
        "compliance_status None not allowed by rule workers (allowed: azure-compliant-cvm)")
    typed = policy(rule(tee=["maa"], attestation_type=["tdxvm"]))
    assert denied_because(typed.evaluate_attestation(maa_claims()),
                          "attestation_type 'sevsnpvm' not allowed by rule workers")


def test_confidential_space_requires_stable_unless_the_rule_says_otherwise() -> None:
    space = policy(rule(tee=["confidential-space"], measurements=[f"sha256:{IMAGE}"],
                        min_tcb={}))
    assert space.evaluate_attestation(cs_claims()).allowed
    assert denied_because(space.evaluate_attestation(cs_claims(support_attributes=["LATEST"])),
                          "support_attributes lack STABLE, required by rule workers")
    anything = policy(rule(tee=["confidential-space"], measurements=[IMAGE], min_tcb={},
                           support_attributes=[]))
    assert anything.evaluate_attestation(cs_claims(support_attributes=[])).allowed
    other_image = dataclasses.replace(cs_claims(), measurement="ee" * 32)
    assert denied_because(space.evaluate_attestation(other_image),
                          "measurement not allowed by rule workers")


def test_confidential_space_dbgstat_and_debug() -> None:
    space = rule(tee=["confidential-space"], measurements=[IMAGE], min_tcb={},
                 dbgstat=["disabled-since-boot"])
    assert policy(space).evaluate_attestation(cs_claims()).allowed
    debugging = dataclasses.replace(cs_claims(dbgstat="enabled"), debug=True)
    decision = policy(space).evaluate_attestation(debugging)
    assert denied_because(decision, "debug enabled, not allowed by rule workers")
    assert "dbgstat 'enabled' not allowed by rule workers" in decision.reason
    debug_ok = policy({**space, "debug": True, "dbgstat": ["enabled"]})
    assert debug_ok.evaluate_attestation(debugging).allowed


def test_tee_specific_checks_do_not_run_for_a_tee_the_rule_does_not_take() -> None:
    decision = policy(tdx_rule(mrowner=["ab" * 48])).evaluate_attestation(snp_claims())
    assert "tee 'sev-snp' not allowed" in decision.reason and "mrowner" not in decision.reason


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"tcb_status": ["UpToDate"]}, r"rules\[0\].tcb_status: applies to tee azure-cvm, tdx"),
        ({"rtmrs": {"rtmr0": ["00" * 48]}}, r"rules\[0\].rtmrs: applies to"),
        ({"compliance_status": ["x"], "tee": ["azure-cvm"]}, r"compliance_status: applies to"),
        ({"support_attributes": []}, r"support_attributes: applies to tee confidential-space"),
        ({"tee": ["tdx"], "min_tcb": {"Milan": {"snp": 1}}}, r"min_tcb: per-product"),
        ({"min_tcb": {"Milan": {"snp": 1}, "snp": 2}}, r"min_tcb: mixes products"),
        ({"min_tcb": {"Milan": {"snp": -1}}}, r"min_tcb.Milan.snp"),
        ({"min_tcb": {"Milan": 3}}, r"min_tcb.Milan: expected a mapping"),
        ({"host_data": ["00" * 31]}, r"rules\[0\].host_data\[0\]: expected 32 bytes"),
        ({"host_data": []}, r"rules\[0\].host_data: must not be empty"),
        ({"id_key_digest": ["zz" * 48]}, r"id_key_digest\[0\]: expected 48 bytes"),
        ({"max_vmpl": 4}, r"max_vmpl: expected an integer 0..3"),
        ({"max_vmpl": True}, r"max_vmpl"),
        ({"smt": "no"}, r"rules\[0\].smt: expected true or false"),
        ({"exclude_products": ["Naples"]}, r"exclude_products\[0\]: unknown value 'Naples'"),
        ({"hardware": ["sgx"]}, r"hardware\[0\]: unknown hardware 'sgx'"),
        ({"tee": ["tdx"], "tcb_status": ["Fine"]}, r"tcb_status\[0\]: unknown value 'Fine'"),
        ({"tee": ["tdx"], "tcb_status": ["Revoked"]}, r"Revoked is never acceptable"),
        ({"tee": ["tdx"], "allow_unknown_tcb": 1}, r"allow_unknown_tcb: expected true or false"),
        ({"tee": ["tdx"], "rtmrs": {"rtmr4": ["00" * 48]}}, r"unknown register 'rtmr4'"),
        ({"tee": ["tdx"], "rtmrs": {"rtmr0": "00" * 48}}, r"rtmrs.rtmr0: expected a list"),
        ({"tee": ["tdx"], "rtmrs": ["00" * 48]}, r"rtmrs: expected a mapping"),
        ({"tee": ["tdx"], "mrconfigid": ["00" * 32]}, r"mrconfigid\[0\]: expected 48 bytes"),
        ({"tee": ["maa"], "attestation_type": ["sgx"]}, r"attestation_type\[0\]: unknown value"),
        ({"tee": ["maa"], "compliance_status": ["no spaces"]}, r"compliance_status\[0\]"),
        ({"tee": ["azure-cvm"], "vm_configuration": {"secure-boot": "yes"}},
         r"vm_configuration.secure-boot: expected true or false"),
        ({"tee": ["azure-cvm"], "vm_configuration": ["secure-boot"]},
         r"vm_configuration: expected a mapping"),
        ({"tee": ["confidential-space"], "support_attributes": ["STABLEST"]},
         r"support_attributes\[0\]: unknown value"),
        ({"tee": ["confidential-space"], "dbgstat": [""]}, r"dbgstat\[0\]"),
        ({"measurements": ["sha256:xyz"]}, r"measurements\[0\]: expected hex digits"),
    ],
)
def test_invalid_tee_fields_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(PolicyFormatError, match=field):
        policy(rule(**changes))


def test_policy_lists_the_tees_its_rules_take() -> None:
    two = policy(rule(), tdx_rule(name="tdx-workers"))
    assert two.tees == frozenset({"sev-snp", "tdx"})
    assert policy().tees == frozenset()


def test_every_tee_kind_loads_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        f"""
version: 1
rules:
  - name: tdx-workers
    tee: [tdx, azure-cvm]
    measurements: ["{MRTD}"]
    tcb_status: [UpToDate, SWHardeningNeeded]
    allow_unknown_tcb: false
    rtmrs: {{rtmr0: ["{'50' * 48}"]}}
    mrconfigid: ["{'22' * 48}"]
    mrowner: ["{'33' * 48}"]
    regions: [eu]
    keks: ["local://keyring/eu/*"]
    producers: ["*"]
  - name: snp-workers
    tee: [sev-snp, azure-cvm, maa]
    hardware: [sev-snp]
    measurements: ["{GOOD}"]
    smt: true
    migration_agent: false
    max_vmpl: 0
    host_data: ["{'00' * 32}"]
    exclude_products: [Turin]
    min_tcb: {{Milan: {{bootloader: 3, snp: 8}}, Genoa: {{snp: 20}}}}
    vm_configuration: {{secure-boot: true}}
    attestation_type: [sevsnpvm]
    compliance_status: [azure-compliant-cvm]
    regions: [eu]
    keks: ["local://keyring/eu/*"]
    producers: ["*"]
  - name: space-workers
    tee: [confidential-space]
    measurements: ["sha256:{IMAGE}"]
    support_attributes: [STABLE]
    dbgstat: [disabled-since-boot]
    regions: [eu]
    keks: ["local://keyring/eu/*"]
    producers: ["*"]
"""
    )
    loaded = ReleasePolicy.load(path)
    expectations = {
        "tdx-workers": tdx_claims(tcb_status="SWHardeningNeeded"),
        "snp-workers": snp_claims(),
        "space-workers": cs_claims(),
    }
    for name, evidence in expectations.items():
        decision = loaded.evaluate_release(evidence, EU_KEK, "eu", "acme")
        assert decision.allowed and decision.rule == name
    assert loaded.evaluate_attestation(azure_claims()).rule == "snp-workers"
    # MAA names no product, so per-product TCB minimums cannot be met: fail closed
    assert denied_because(loaded.evaluate_attestation(maa_claims()),
                          "product missing from evidence, required by rule snp-workers")
