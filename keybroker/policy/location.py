"""Policy on where the attested worker is: a region's keys only for workers in that region.

What it does: ``attested_location(claims)`` reads the worker's location from verified claims
— Confidential Space: ``submods.gce.zone`` (reduced to its region, ``europe-west4-a`` ->
``europe-west4``), signed by Google; MAA: the top-level claim a rule names in
``maa_location_claim``, which the operator's MAA attestation policy issues (a constant per
attested ``x-ms-azurevm-vmid``: neither the HCL report, the vTPM quote nor MAA's own claims
carry the VM's region, and the MAA instance's region is not the VM's); simulated SEV-SNP: the
``SBLOC:`` claim in HOST_DATA (``keybroker.attestation.simulated_location``), read from
simulated evidence only. Azure CVM evidence verified here (``azure-cvm``) has no location.
``WorkerLocations`` is the rule field ``worker_locations: {REGION: [PATTERN, ...]}`` (with
``maa_location_claim``): a release or generate for REGION needs an attested location matching
one of its patterns (fnmatch, lowercase); a region the field does not list, or evidence
without a location, is denied. A rule without the field does not check locations.

What it does not: know the residency map (the pipeline's preflight checks configured
locations; this checks attested ones) or trust a location the worker merely asserts.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from keybroker.attestation.simulated_location import host_data_location
from keybroker.policy.errors import PolicyFormatError
from keybroker.policy.fields import MAX_LIST_ITEMS, string_list

if TYPE_CHECKING:
    from keybroker.attestation.claims import Claims

__all__ = ["MAA_LOCATION_CLAIM", "WORKER_LOCATIONS", "WorkerLocations", "attested_location",
           "checked_maa_location_claim"]

WORKER_LOCATIONS = "worker_locations"
MAA_LOCATION_CLAIM = "maa_location_claim"
_CLAIM_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
# Claims MAA or JWT define, or that carry what the guest sent: none may name a location.
_RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "nonce", "cnf",
                              "secureboot"})
_LOCATION = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_PATTERN = re.compile(r"^[a-z0-9*?][a-z0-9*?-]{0,63}$")
_ZONE = re.compile(r"^([a-z]+-[a-z]+[0-9]+)-[a-z]$")


def attested_location(claims: Claims, maa_location_claim: str | None = None) -> str | None:
    """Where the verified worker is, or None when its evidence does not say
    (``maa_location_claim``: the MAA token's claim that carries it, see the module)."""
    platform = claims.platform
    if claims.tee == "confidential-space":
        zone = platform.get("zone")
        if isinstance(zone, str) and zone:
            lowered = zone.lower()
            match = _ZONE.match(lowered)
            if match:
                return match.group(1)
            return lowered if _LOCATION.match(lowered) else None
        return None
    if claims.tee == "maa" and maa_location_claim:
        location = claims.raw.get(maa_location_claim)   # top level: issued by MAA's policy
        if isinstance(location, str) and _LOCATION.match(location.lower()):
            return location.lower()
        return None
    if claims.tee == "sev-snp" and claims.simulated:
        host_data = platform.get("host_data")
        if isinstance(host_data, str):
            try:
                return host_data_location(bytes.fromhex(host_data))
            except ValueError:
                return None
    return None


@dataclass(frozen=True)
class WorkerLocations:
    """Region -> the worker-location patterns allowed to have that region's keys."""

    by_region: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    required: bool = False
    maa_location_claim: str | None = None

    @classmethod
    def parse(cls, where: str, raw: Mapping) -> WorkerLocations:
        claim = _maa_claim(where, raw)
        if WORKER_LOCATIONS not in raw:
            if claim is not None:
                raise PolicyFormatError(f"{where}.{MAA_LOCATION_CLAIM}: only with "
                                        f"{WORKER_LOCATIONS}")
            return cls()
        field_name = f"{where}.{WORKER_LOCATIONS}"
        value = raw[WORKER_LOCATIONS]
        if not isinstance(value, Mapping) or not value:
            raise PolicyFormatError(f"{field_name}: expected a mapping of region -> locations")
        if len(value) > MAX_LIST_ITEMS:
            raise PolicyFormatError(f"{field_name}: more than {MAX_LIST_ITEMS} regions")
        parsed = {}
        for region, patterns in value.items():
            if not isinstance(region, str) or not _REGION.match(region):
                raise PolicyFormatError(f"{field_name}: not a region name: {region!r}")
            where_region = f"{field_name}.{region}"
            items = string_list({"p": patterns}, "p", where_region, required=True)
            for index, pattern in enumerate(items):
                if not _PATTERN.match(pattern):
                    raise PolicyFormatError(f"{where_region}[{index}]: expected a lowercase "
                                            f"location or pattern, got {pattern!r}")
            parsed[region] = items
        return cls(MappingProxyType(parsed), required=True, maa_location_claim=claim)

    def location_of(self, claims: Claims) -> str | None:
        """The worker's attested location as this rule reads it."""
        return attested_location(claims, self.maa_location_claim)

    def failures(self, claims: Claims, region: str, rule: str) -> list[str]:
        if not self.required:
            return []
        allowed = self.by_region.get(region)
        if allowed is None:
            return [f"region {region!r} has no worker_locations in rule {rule}"]
        location = self.location_of(claims)
        if location is None:
            hint = (f" (no {MAA_LOCATION_CLAIM} configured)" if claims.tee == "maa"
                    and self.maa_location_claim is None else "")
            return [f"worker location not attested by the {claims.tee} evidence{hint}; rule "
                    f"{rule} requires one of {', '.join(allowed)} for region {region!r}"]
        if not any(fnmatch.fnmatchcase(location, pattern) for pattern in allowed):
            return [f"worker location {location!r} not allowed for region {region!r} by rule "
                    f"{rule} (allowed: {', '.join(allowed)})"]
        return []


def _maa_claim(where: str, raw: Mapping) -> str | None:
    """The rule's ``maa_location_claim``: a top-level claim name MAA's policy issues."""
    if MAA_LOCATION_CLAIM not in raw:
        return None
    return checked_maa_location_claim(raw[MAA_LOCATION_CLAIM], f"{where}.{MAA_LOCATION_CLAIM}")


def checked_maa_location_claim(value: object, field_name: str) -> str:
    """``value`` if it can name the MAA claim a rule reads the location from, else
    ``PolicyFormatError`` naming ``field_name`` (the residency map checks its own this way)."""
    if not isinstance(value, str) or not _CLAIM_NAME.match(value):
        raise PolicyFormatError(f"{field_name}: expected a claim name (letters, digits, '.', "
                                "'_', '-')")
    if value.lower() in _RESERVED_CLAIMS or value.lower().startswith("x-ms-"):
        raise PolicyFormatError(f"{field_name}: {value!r} is a claim MAA or JWT defines, not "
                                "one your MAA policy issues")
    return value
