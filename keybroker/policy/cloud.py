"""Policy checks on cloud attestation: Azure CVM and MAA facts, Google Confidential Space facts.

What it does: `AzureRequirements` — the VM configuration the HCL runtime data reports
(``vm_configuration: {secure-boot: true, console-enabled: false}``) for ``azure-cvm`` and
``maa``; the MAA attestation type and ``x-ms-compliance-status`` (default: only
``azure-compliant-cvm``) for ``maa``. `ConfidentialSpaceRequirements` — the image's
``support_attributes`` (default: must include ``STABLE``; ``[]`` requires none) and an
optional ``dbgstat`` allow-list, for ``confidential-space``. Each returns every failed
check as a reason that names it. What it does not: check the hardware type (a common rule
field, see `rule`) or the image digest, which is the claims' measurement.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from keybroker.attestation.maa import ATTESTATION_TYPES
from keybroker.policy.errors import PolicyFormatError
from keybroker.policy.fields import MAX_LIST_ITEMS, choices, string_list

if TYPE_CHECKING:
    from keybroker.attestation.claims import Claims

__all__ = [
    "AZURE_FIELDS",
    "CONFIDENTIAL_SPACE_FIELDS",
    "DEFAULT_COMPLIANCE",
    "DEFAULT_SUPPORT_ATTRIBUTES",
    "MAA_FIELDS",
    "AzureRequirements",
    "ConfidentialSpaceRequirements",
]

AZURE_FIELDS = frozenset({"vm_configuration"})
MAA_FIELDS = frozenset({"attestation_type", "compliance_status"})
CONFIDENTIAL_SPACE_FIELDS = frozenset({"support_attributes", "dbgstat"})
DEFAULT_COMPLIANCE = ("azure-compliant-cvm",)
SUPPORT_ATTRIBUTES = frozenset({"LATEST", "STABLE", "USABLE", "EXPERIMENTAL"})
DEFAULT_SUPPORT_ATTRIBUTES = ("STABLE",)
VM_CONFIGURATION_TEES = frozenset({"azure-cvm", "maa"})
_TOKEN_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_VM_SETTING = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


def _token_values(raw: Mapping, key: str, where: str, default: tuple[str, ...]
                  ) -> tuple[str, ...]:
    if key not in raw:
        return default
    values = string_list(raw, key, where, required=True)
    for index, value in enumerate(values):
        if not _TOKEN_VALUE.match(value):
            raise PolicyFormatError(f"{where}[{index}]: not a claim value: {value!r}")
    return values


def _parse_vm_configuration(where: str, raw: object) -> Mapping[str, bool]:
    if not isinstance(raw, Mapping):
        raise PolicyFormatError(f"{where}: expected a mapping of setting -> true/false")
    if len(raw) > MAX_LIST_ITEMS:
        raise PolicyFormatError(f"{where}: more than {MAX_LIST_ITEMS} settings")
    parsed = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _VM_SETTING.match(name):
            raise PolicyFormatError(f"{where}: bad setting name {name!r}")
        if not isinstance(value, bool):
            raise PolicyFormatError(f"{where}.{name}: expected true or false")
        parsed[name] = value
    return MappingProxyType(parsed)


@dataclass(frozen=True)
class AzureRequirements:
    """What a rule demands of Azure CVM evidence and MAA tokens."""

    vm_configuration: Mapping[str, bool] = field(default_factory=dict)
    attestation_type: tuple[str, ...] = ()
    compliance_status: tuple[str, ...] = DEFAULT_COMPLIANCE

    @classmethod
    def parse(cls, where: str, raw: Mapping) -> AzureRequirements:
        return cls(
            vm_configuration=_parse_vm_configuration(f"{where}.vm_configuration",
                                                     raw.get("vm_configuration", {})),
            attestation_type=choices(raw, "attestation_type", f"{where}.attestation_type",
                                     ATTESTATION_TYPES),
            compliance_status=_token_values(raw, "compliance_status",
                                            f"{where}.compliance_status", DEFAULT_COMPLIANCE),
        )

    def failures(self, claims: Claims, rule: str) -> list[str]:
        failures: list[str] = []
        if claims.tee in VM_CONFIGURATION_TEES:
            failures.extend(self._vm_configuration_failures(claims, rule))
        if claims.tee == "maa":
            failures.extend(self._maa_failures(claims, rule))
        return failures

    def _vm_configuration_failures(self, claims: Claims, rule: str) -> list[str]:
        if not self.vm_configuration:
            return []
        configuration = claims.platform.get("vm_configuration")
        if not isinstance(configuration, Mapping):
            return [f"vm_configuration missing from evidence, required by rule {rule}"]
        failures = []
        for name, expected in sorted(self.vm_configuration.items()):
            actual = configuration.get(name)
            if actual is not expected:
                failures.append(f"vm_configuration {name} is {_yaml(actual)}, rule {rule} "
                                f"requires {_yaml(expected)}")
        return failures

    def _maa_failures(self, claims: Claims, rule: str) -> list[str]:
        failures = []
        attestation_type = claims.platform.get("attestation_type")
        if self.attestation_type and attestation_type not in self.attestation_type:
            failures.append(f"attestation_type {attestation_type!r} not allowed by rule {rule}")
        compliance = claims.platform.get("compliance_status")
        if compliance not in self.compliance_status:
            failures.append(f"compliance_status {compliance!r} not allowed by rule {rule} "
                            f"(allowed: {', '.join(self.compliance_status)})")
        return failures


def _yaml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "missing" if value is None else repr(value)


@dataclass(frozen=True)
class ConfidentialSpaceRequirements:
    """What a rule demands of a Confidential Space token beyond image digest and debug."""

    support_attributes: tuple[str, ...] = DEFAULT_SUPPORT_ATTRIBUTES
    dbgstat: tuple[str, ...] = ()

    @classmethod
    def parse(cls, where: str, raw: Mapping) -> ConfidentialSpaceRequirements:
        attributes = DEFAULT_SUPPORT_ATTRIBUTES
        if "support_attributes" in raw:  # [] is meaningful here: no attribute required
            attributes = choices(raw, "support_attributes", f"{where}.support_attributes",
                                 SUPPORT_ATTRIBUTES)
        dbgstat = ()
        if "dbgstat" in raw:
            dbgstat = _token_values(raw, "dbgstat", f"{where}.dbgstat", ())
        return cls(support_attributes=attributes, dbgstat=dbgstat)

    def failures(self, claims: Claims, rule: str) -> list[str]:
        if claims.tee != "confidential-space":
            return []
        failures = []
        present = claims.platform.get("support_attributes")
        present_set = set(present) if isinstance(present, tuple | list) else set()
        for attribute in self.support_attributes:
            if attribute not in present_set:
                failures.append(f"support_attributes lack {attribute}, required by rule {rule}")
        if self.dbgstat:
            status = claims.platform.get("dbgstat")
            if status not in self.dbgstat:
                failures.append(f"dbgstat {status!r} not allowed by rule {rule}")
        return failures
