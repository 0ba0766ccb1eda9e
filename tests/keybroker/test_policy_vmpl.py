"""SEV-SNP VMPL is checked by default: only VMPL 0 gets keys unless a rule says otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from keybroker.attestation.claims import Claims
from keybroker.policy import ReleasePolicy

MEASUREMENT = "ab" * 48


def _claims(tee: str = "sev-snp", **platform: Any) -> Claims:
    return Claims(
        tee=tee,
        report_version=2,
        debug=False,
        measurement=MEASUREMENT,
        report_data=bytes(64),
        product="Milan",
        signing_key="vcek",
        tcb={"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
        simulated=False,
        platform={"smt": True, "migration_agent": False, **platform},
    )


def _policy(**rule_fields: Any) -> ReleasePolicy:
    rule = {
        "name": "workers",
        "tee": ["sev-snp"],
        "measurements": [MEASUREMENT],
        "min_tcb": {},
        "regions": ["eu"],
        "keks": ["local://keyring/eu/*"],
        "producers": ["acme"],
        **rule_fields,
    }
    return ReleasePolicy.from_mapping({"version": 1, "rules": [rule]})


@pytest.mark.parametrize("vmpl", [1, 2, 3])
def test_a_report_from_above_vmpl_0_is_denied_by_default(vmpl: int) -> None:
    decision = _policy().evaluate_attestation(_claims(vmpl=vmpl))
    assert not decision.allowed
    assert f"vmpl {vmpl} above the default max_vmpl 0 of rule workers" in decision.reason


def test_vmpl_0_passes_and_a_rule_can_raise_the_limit() -> None:
    assert _policy().evaluate_attestation(_claims(vmpl=0)).allowed
    assert _policy(max_vmpl=2).evaluate_attestation(_claims(vmpl=2)).allowed
    denied = _policy(max_vmpl=2).evaluate_attestation(_claims(vmpl=3))
    assert "vmpl 3 above max_vmpl 2 of rule workers" in denied.reason


def test_an_explicit_limit_also_denies_evidence_without_a_vmpl() -> None:
    assert _policy().evaluate_attestation(_claims()).allowed
    denied = _policy(max_vmpl=0).evaluate_attestation(_claims())
    assert not denied.allowed and "vmpl" in denied.reason
