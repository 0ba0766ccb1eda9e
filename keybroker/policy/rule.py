"""One release rule: which evidence it accepts and what that evidence may then have.

What it does: `parse_rule` validates a rule mapping (every error names its field) into a
`ReleaseRule`; the rule lists every failed attestation check (`attestation_failures`),
release check (`release_failures`) and named-key check. Common checks — TEE kind, simulated,
debug, measurement, hardware, flat ``min_tcb`` — live here; TEE-specific checks live in
`hardware` (SEV-SNP, TDX) and `cloud` (Azure, MAA, Confidential Space). A TEE-specific field
in a rule whose ``tee`` list holds no TEE it applies to is an error, not a silent no-op.
What it does not: combine rules into a decision (see `document`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from keybroker.attestation.claims import KNOWN_TEES
from keybroker.policy.cloud import (
    AZURE_FIELDS,
    CONFIDENTIAL_SPACE_FIELDS,
    MAA_FIELDS,
    AzureRequirements,
    ConfidentialSpaceRequirements,
)
from keybroker.policy.errors import PolicyFormatError
from keybroker.policy.fields import boolean, refuse_unknown_fields, string_list
from keybroker.policy.hardware import (
    SNP_FIELDS,
    SnpRequirements,
    TdxRequirements,
    hardware_of,
    parse_min_tcb,
    tcb_failures,
)
from keybroker.policy.location import MAA_LOCATION_CLAIM, WORKER_LOCATIONS, WorkerLocations

if TYPE_CHECKING:
    from keybroker.attestation.claims import Claims

__all__ = ["ANY_MEASUREMENT", "HARDWARE_KINDS", "ReleaseRule", "parse_rule"]

ANY_MEASUREMENT = "*"
HARDWARE_KINDS = frozenset({"sev-snp", "tdx", "sev"})
_COMMON_FIELDS = frozenset({"name", "tee", "allow_simulated", "debug", "measurements", "min_tcb",
                            "hardware", "regions", "keks", "named_keys", "producers",
                            WORKER_LOCATIONS})
# Which TEE kinds each TEE-specific field applies to (docs/PROTOCOL.md, "Release policy").
_APPLIES_TO: dict[str, frozenset[str]] = {
    **dict.fromkeys(SNP_FIELDS, frozenset({"sev-snp", "azure-cvm", "maa"})),
    **dict.fromkeys(("rtmrs", "mrconfigid", "mrowner"), frozenset({"tdx", "azure-cvm", "maa"})),
    **dict.fromkeys(("tcb_status", "allow_unknown_tcb"), frozenset({"tdx", "azure-cvm"})),
    **dict.fromkeys(AZURE_FIELDS, frozenset({"azure-cvm", "maa"})),
    **dict.fromkeys((*MAA_FIELDS, MAA_LOCATION_CLAIM), frozenset({"maa"})),
    **dict.fromkeys(CONFIDENTIAL_SPACE_FIELDS, frozenset({"confidential-space"})),
}
_RULE_FIELDS = _COMMON_FIELDS | frozenset(_APPLIES_TO)
_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2}){1,128}$")
_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_IMAGE_DIGEST_PREFIX = "sha256:"


@dataclass(frozen=True)
class ReleaseRule:
    """One rule: which evidence it accepts and what it lets that evidence have."""

    name: str
    tee: tuple[str, ...]
    allow_simulated: bool
    debug: bool
    measurements: tuple[str, ...]
    min_tcb: Mapping[str, int]
    regions: tuple[str, ...]
    keks: tuple[str, ...]
    named_keys: tuple[str, ...]
    producers: tuple[str, ...]
    hardware: tuple[str, ...] = ()
    snp: SnpRequirements = field(default_factory=SnpRequirements)
    tdx: TdxRequirements = field(default_factory=TdxRequirements)
    azure: AzureRequirements = field(default_factory=AzureRequirements)
    confidential_space: ConfidentialSpaceRequirements = field(
        default_factory=ConfidentialSpaceRequirements)
    worker_locations: WorkerLocations = field(default_factory=WorkerLocations)

    def attestation_failures(self, claims: Claims) -> list[str]:
        """Every check of this rule that the evidence fails (empty when it passes)."""
        failures: list[str] = []
        if claims.tee not in self.tee:
            failures.append(f"tee {claims.tee!r} not allowed by rule {self.name}")
        if claims.simulated and not self.allow_simulated:
            failures.append(f"simulated evidence not allowed by rule {self.name}")
        if claims.debug and not self.debug:
            failures.append(f"debug enabled, not allowed by rule {self.name}")
        if not self._measurement_allowed(claims):
            failures.append(f"measurement not allowed by rule {self.name}")
        if self.hardware and hardware_of(claims) not in self.hardware:
            failures.append(f"hardware {hardware_of(claims)!r} not allowed by rule {self.name}")
        failures.extend(tcb_failures(claims.tcb, self.min_tcb, self.name))
        if claims.tee in self.tee:  # TEE-specific checks only for a TEE the rule takes
            failures.extend(self.snp.failures(claims, self.name))
            failures.extend(self.tdx.failures(claims, self.name))
            failures.extend(self.azure.failures(claims, self.name))
            failures.extend(self.confidential_space.failures(claims, self.name))
        return failures

    def _measurement_allowed(self, claims: Claims) -> bool:
        measurement = str(claims.measurement).lower()
        for allowed in self.measurements:
            if allowed == ANY_MEASUREMENT:
                if claims.simulated:
                    return True
            elif allowed == measurement:
                return True
        return False

    def release_failures(self, kek_uri: str, region: str, producer_id: str) -> list[str]:
        failures = []
        if region not in self.regions:
            failures.append(f"region {region!r} not allowed by rule {self.name}")
        if not _matches_any(kek_uri, self.keks):
            failures.append(f"kek {kek_uri!r} not allowed by rule {self.name}")
        if not _matches_any(producer_id, self.producers):
            failures.append(f"producer {producer_id!r} not allowed by rule {self.name}")
        return failures

    def location_failures(self, claims: Claims, region: str) -> list[str]:
        """The attested worker location against ``worker_locations`` for ``region``."""
        return self.worker_locations.failures(claims, region, self.name)

    def named_key_failures(self, name: str) -> list[str]:
        if _matches_any(name, self.named_keys):
            return []
        return [f"named key {name!r} not allowed by rule {self.name}"]


def _matches_any(value: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)


def parse_rule(where: str, raw: object) -> ReleaseRule:
    """A validated rule from its mapping; `PolicyFormatError` names the first bad field."""
    if not isinstance(raw, Mapping):
        raise PolicyFormatError(f"{where}: expected a mapping")
    refuse_unknown_fields(where, raw, _RULE_FIELDS)
    name = raw.get("name")
    if not isinstance(name, str) or not _RULE_NAME.match(name):
        raise PolicyFormatError(f"{where}.name: expected a name of letters, digits, '.', '_', '-'")
    tees = string_list(raw, "tee", f"{where}.tee", required=True)
    for index, tee in enumerate(tees):
        if tee not in KNOWN_TEES:
            known = ", ".join(sorted(KNOWN_TEES))
            raise PolicyFormatError(f"{where}.tee[{index}]: unknown TEE {tee!r} (known: {known})")
    _check_fields_apply(where, raw, tees)
    allow_simulated = boolean(raw, "allow_simulated", f"{where}.allow_simulated")
    measurements = _parse_measurements(f"{where}.measurements", raw, allow_simulated)
    regions = string_list(raw, "regions", f"{where}.regions", required=False)
    for index, region in enumerate(regions):
        if not _REGION.match(region):
            raise PolicyFormatError(f"{where}.regions[{index}]: not a region name: {region!r}")
    hardware = string_list(raw, "hardware", f"{where}.hardware", required=False)
    for index, kind in enumerate(hardware):
        if kind not in HARDWARE_KINDS:
            raise PolicyFormatError(f"{where}.hardware[{index}]: unknown hardware {kind!r} "
                                    f"(known: {', '.join(sorted(HARDWARE_KINDS))})")
    min_tcb, min_tcb_by_product = parse_min_tcb(f"{where}.min_tcb", raw.get("min_tcb", {}))
    if min_tcb_by_product is not None and not set(tees) & _APPLIES_TO["smt"]:
        raise PolicyFormatError(f"{where}.min_tcb: per-product minimums apply to SEV-SNP "
                                "evidence only (tee sev-snp, azure-cvm or maa)")
    return ReleaseRule(
        name=name,
        tee=tees,
        allow_simulated=allow_simulated,
        debug=boolean(raw, "debug", f"{where}.debug"),
        measurements=measurements,
        min_tcb=min_tcb,
        regions=regions,
        keks=string_list(raw, "keks", f"{where}.keks", required=False),
        named_keys=string_list(raw, "named_keys", f"{where}.named_keys", required=False),
        producers=string_list(raw, "producers", f"{where}.producers", required=False),
        hardware=hardware,
        snp=SnpRequirements.parse(where, raw, min_tcb_by_product),
        tdx=TdxRequirements.parse(where, raw),
        azure=AzureRequirements.parse(where, raw),
        confidential_space=ConfidentialSpaceRequirements.parse(where, raw),
        worker_locations=WorkerLocations.parse(where, raw),
    )


def _check_fields_apply(where: str, raw: Mapping, tees: Sequence[str]) -> None:
    for key in sorted(str(key) for key in raw if key in _APPLIES_TO):
        applies_to = _APPLIES_TO[key]
        if not applies_to & set(tees):
            raise PolicyFormatError(
                f"{where}.{key}: applies to tee {', '.join(sorted(applies_to))} only, "
                f"and this rule's tee is [{', '.join(tees)}]")


def _parse_measurements(where: str, raw: Mapping, allow_simulated: bool) -> tuple[str, ...]:
    """Hex launch measurements (Confidential Space: image digests, ``sha256:`` optional)."""
    measurements = string_list(raw, "measurements", where, required=True)
    normalized = []
    for index, measurement in enumerate(measurements):
        if measurement == ANY_MEASUREMENT:
            if not allow_simulated:
                raise PolicyFormatError(
                    f"{where}[{index}]: '*' is allowed only in a rule with allow_simulated: true "
                    "(and then matches simulated evidence only)"
                )
            normalized.append(ANY_MEASUREMENT)
            continue
        if measurement.startswith(_IMAGE_DIGEST_PREFIX):
            measurement = measurement[len(_IMAGE_DIGEST_PREFIX):]
        if not _HEX.match(measurement):
            raise PolicyFormatError(f"{where}[{index}]: expected hex digits or '*'")
        normalized.append(measurement.lower())
    return tuple(normalized)
