"""Translate rules of our YAML release policy into an Azure Secure Key Release policy document.

What it does: turns one rule (or several) of the broker's release policy, already parsed from YAML,
into the JSON release policy that Azure Key Vault / Managed HSM evaluates against a Microsoft Azure
Attestation (MAA) token before it releases a key (grammar: https://aka.ms/policygrammarkeys)::

    {"version": "1.0.0",
     "anyOf": [{
       "authority": "https://<maa>.attest.azure.net",
       "allOf": [
         {"claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "sevsnpvm"},
         {"claim": "x-ms-isolation-tee.x-ms-compliance-status", "equals": "azure-compliant-cvm"},
         {"claim": "x-ms-isolation-tee.x-ms-sevsnpvm-is-debuggable", "equals": false},
         {"anyOf": [{"claim": "...launchmeasurement", "equals": "<hex>"}, ...]},
         {"claim": "...bootloader-svn", "greaterOrEquals": 3}, ...]}]}

Rule keys understood (anything else is refused, so that no constraint is silently dropped):

- ``tee``: ``sev-snp`` or ``azure-cvm`` (an SEV-SNP Azure confidential VM; MAA ``sevsnpvm``).
- ``debug``: must be false (the default); a rule that allows debug cannot become a release policy.
- ``measurements``: allow-list of 48-byte launch measurements as hex (any of them).
- ``min_tcb``: minimum SVNs, keys ``bootloader``, ``tee``, ``snp``, ``microcode``.
- ``name``, ``description``: labels, not constraints.

What it does not do: evaluate policies (the vault does), talk to Azure, or handle TDX / Confidential
Space rules, whose MAA claim names this module does not model: those rules raise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from keybroker.kms.base import KmsError

__all__ = [
    "ReleasePolicyTranslationError",
    "encode_release_policy",
    "release_policy_for_rule",
    "release_policy_for_rules",
]

POLICY_VERSION = "1.0.0"
ISOLATION_PREFIX = "x-ms-isolation-tee."
CLAIM_ATTESTATION_TYPE = ISOLATION_PREFIX + "x-ms-attestation-type"
CLAIM_COMPLIANCE_STATUS = ISOLATION_PREFIX + "x-ms-compliance-status"
CLAIM_SNP_DEBUGGABLE = ISOLATION_PREFIX + "x-ms-sevsnpvm-is-debuggable"
CLAIM_SNP_MEASUREMENT = ISOLATION_PREFIX + "x-ms-sevsnpvm-launchmeasurement"
SNP_TCB_CLAIMS = {
    "bootloader": ISOLATION_PREFIX + "x-ms-sevsnpvm-bootloader-svn",
    "tee": ISOLATION_PREFIX + "x-ms-sevsnpvm-tee-svn",
    "snp": ISOLATION_PREFIX + "x-ms-sevsnpvm-snpfw-svn",
    "microcode": ISOLATION_PREFIX + "x-ms-sevsnpvm-microcode-svn",
}
SNP_TEES = frozenset({"sev-snp", "azure-cvm"})
_KNOWN_RULE_KEYS = frozenset({"tee", "debug", "measurements", "min_tcb", "name", "description"})
_MEASUREMENT_RE = re.compile(r"^[0-9a-fA-F]{96}$")
_MAX_MEASUREMENTS = 64
_MAX_RULES = 32
_MAX_SVN = 255


class ReleasePolicyTranslationError(KmsError):
    """A policy rule cannot be expressed as an Azure release policy; the message names why."""


def release_policy_for_rule(rule: Mapping[str, Any], *, authority: str) -> dict[str, Any]:
    """The release policy that lets a key go exactly to TEEs that satisfy ``rule``."""
    return release_policy_for_rules([rule], authority=authority)


def release_policy_for_rules(
    rules: Sequence[Mapping[str, Any]], *, authority: str
) -> dict[str, Any]:
    """One ``anyOf`` entry per rule, all attested by the same MAA ``authority``."""
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise ReleasePolicyTranslationError("rules must be a list of rule mappings")
    if not 0 < len(rules) <= _MAX_RULES:
        raise ReleasePolicyTranslationError(f"need 1..{_MAX_RULES} rules, got {len(rules)}")
    checked_authority = _checked_authority(authority)
    return {
        "version": POLICY_VERSION,
        "anyOf": [
            {"authority": checked_authority, "allOf": _conditions_for_rule(rule, index)}
            for index, rule in enumerate(rules)
        ],
    }


def encode_release_policy(policy: Mapping[str, Any]) -> bytes:
    """UTF-8 JSON for ``KeyReleasePolicy(encoded_policy=...)`` (content type application/json)."""
    return json.dumps(policy, separators=(",", ":"), ensure_ascii=True).encode("utf-8")


def _checked_authority(authority: str) -> str:
    if not isinstance(authority, str) or len(authority) > 512:
        raise ReleasePolicyTranslationError("authority must be the MAA URL as a short string")
    parts = urlsplit(authority)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise ReleasePolicyTranslationError(
            f"authority {authority!r} must be an https URL of an attestation provider"
        )
    if parts.path not in ("", "/") or parts.username or parts.password:
        raise ReleasePolicyTranslationError(
            f"authority {authority!r} must have no path or userinfo"
        )
    return authority


def _conditions_for_rule(rule: Mapping[str, Any], index: int) -> list[dict[str, Any]]:
    if not isinstance(rule, Mapping):
        raise ReleasePolicyTranslationError(f"rule {index}: must be a mapping")
    where = f"rule {index}" + (f" ({rule['name']!r})" if "name" in rule else "")
    unknown = sorted(str(key) for key in rule if key not in _KNOWN_RULE_KEYS)
    if unknown:
        raise ReleasePolicyTranslationError(
            f"{where}: keys {', '.join(unknown)} cannot be expressed in an Azure release policy"
        )
    tee = rule.get("tee")
    if tee not in SNP_TEES:
        raise ReleasePolicyTranslationError(
            f"{where}: tee {tee!r} is not supported; use one of {', '.join(sorted(SNP_TEES))}"
        )
    debug = rule.get("debug", False)
    if debug is not False:
        raise ReleasePolicyTranslationError(f"{where}: debug must be false, got {debug!r}")
    conditions: list[dict[str, Any]] = [
        {"claim": CLAIM_ATTESTATION_TYPE, "equals": "sevsnpvm"},
        {"claim": CLAIM_COMPLIANCE_STATUS, "equals": "azure-compliant-cvm"},
        {"claim": CLAIM_SNP_DEBUGGABLE, "equals": False},
    ]
    if "measurements" in rule:
        conditions.append(_measurement_condition(rule["measurements"], where))
    if "min_tcb" in rule:
        conditions.extend(_tcb_conditions(rule["min_tcb"], where))
    return conditions


def _measurement_condition(measurements: Any, where: str) -> dict[str, Any]:
    if isinstance(measurements, (str, bytes)) or not isinstance(measurements, Sequence):
        raise ReleasePolicyTranslationError(f"{where}: measurements must be a list of hex strings")
    if not 0 < len(measurements) <= _MAX_MEASUREMENTS:
        raise ReleasePolicyTranslationError(
            f"{where}: measurements must list 1..{_MAX_MEASUREMENTS} values, "
            f"got {len(measurements)}"
        )
    normalized: list[str] = []
    for position, value in enumerate(measurements):
        if not isinstance(value, str) or not _MEASUREMENT_RE.match(value):
            raise ReleasePolicyTranslationError(
                f"{where}: measurements[{position}] must be 96 hex characters (48 bytes)"
            )
        if value.lower() not in normalized:
            normalized.append(value.lower())
    matches = [{"claim": CLAIM_SNP_MEASUREMENT, "equals": value} for value in normalized]
    return matches[0] if len(matches) == 1 else {"anyOf": matches}


def _tcb_conditions(min_tcb: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(min_tcb, Mapping) or not min_tcb:
        raise ReleasePolicyTranslationError(f"{where}: min_tcb must be a non-empty mapping")
    conditions = []
    for component, minimum in min_tcb.items():
        claim = SNP_TCB_CLAIMS.get(component)
        if claim is None:
            raise ReleasePolicyTranslationError(
                f"{where}: min_tcb component {component!r} is not one of "
                f"{', '.join(SNP_TCB_CLAIMS)}"
            )
        if (
            isinstance(minimum, bool)
            or not isinstance(minimum, int)
            or not 0 <= minimum <= _MAX_SVN
        ):
            raise ReleasePolicyTranslationError(
                f"{where}: min_tcb.{component} must be an integer 0..{_MAX_SVN}"
            )
        conditions.append({"claim": claim, "greaterOrEquals": minimum})
    return conditions
