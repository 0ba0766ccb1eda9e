"""The release policy: which verified TEEs may receive which keys. YAML, deny by default.

The policy sees only normalized ``Claims`` (never raw evidence) and the request's KEK,
region, producer or key name. Every decision carries a reason that names the failed checks
("measurement not allowed by rule demo-workers", "region 'us' not allowed by rule ...")
and the rule that allowed it. The grammar is in docs/PROTOCOL.md ("Release policy").

Simulated evidence (a chain anchored at the development root) passes only when both the
policy's global ``allow_simulated`` and the rule's own ``allow_simulated`` are true. A rule's
measurement ``"*"`` is allowed only in such a rule and matches simulated evidence only.

This module does not verify evidence, talk to a KMS or write the ledger.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from keybroker.attestation.claims import KNOWN_TEES

if TYPE_CHECKING:
    from keybroker.attestation.claims import Claims

__all__ = [
    "MAX_POLICY_BYTES",
    "Decision",
    "PolicyError",
    "PolicyFormatError",
    "ReleasePolicy",
    "ReleaseRule",
]

POLICY_VERSION = 1
MAX_POLICY_BYTES = 256 * 1024
MAX_RULES = 256
MAX_LIST_ITEMS = 1024
ANY_MEASUREMENT = "*"
_RULE_FIELDS = frozenset(
    {
        "name",
        "tee",
        "allow_simulated",
        "debug",
        "measurements",
        "min_tcb",
        "regions",
        "keks",
        "named_keys",
        "producers",
    }
)
_TOP_FIELDS = frozenset({"version", "allow_simulated", "rules"})
_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2}){1,128}$")
_TCB_COMPONENT = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


class PolicyError(Exception):
    """Base of the policy's errors."""


class PolicyFormatError(PolicyError):
    """The policy file is malformed; the message names the field."""


@dataclass(frozen=True)
class Decision:
    """The outcome of one policy question. ``rule`` names the allowing rule, if any."""

    allowed: bool
    reason: str
    rule: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"allowed": self.allowed, "reason": self.reason, "rule": self.rule}


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
        failures.extend(self._tcb_failures(claims))
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

    def _tcb_failures(self, claims: Claims) -> list[str]:
        failures = []
        for component, minimum in sorted(self.min_tcb.items()):
            value = claims.tcb.get(component)
            if not isinstance(value, int):
                failures.append(
                    f"tcb component {component!r} missing from evidence, "
                    f"required by rule {self.name}"
                )
            elif value < minimum:
                failures.append(
                    f"tcb {component} {value} below minimum {minimum} of rule {self.name}"
                )
        return failures

    def release_failures(self, kek_uri: str, region: str, producer_id: str) -> list[str]:
        failures = []
        if region not in self.regions:
            failures.append(f"region {region!r} not allowed by rule {self.name}")
        if not _matches_any(kek_uri, self.keks):
            failures.append(f"kek {kek_uri!r} not allowed by rule {self.name}")
        if not _matches_any(producer_id, self.producers):
            failures.append(f"producer {producer_id!r} not allowed by rule {self.name}")
        return failures

    def named_key_failures(self, name: str) -> list[str]:
        if _matches_any(name, self.named_keys):
            return []
        return [f"named key {name!r} not allowed by rule {self.name}"]


class ReleasePolicy:
    """A validated policy. Immutable; load a new one to change it."""

    def __init__(self, *, allow_simulated: bool, rules: Sequence[ReleaseRule]) -> None:
        self._allow_simulated = allow_simulated
        self._rules = tuple(rules)

    @classmethod
    def load(cls, path: Path) -> ReleasePolicy:
        path = Path(path)
        try:
            with path.open("rb") as handle:
                content = handle.read(MAX_POLICY_BYTES + 1)
        except OSError as error:
            raise PolicyFormatError(f"cannot read policy {path}: {error.strerror}") from None
        if len(content) > MAX_POLICY_BYTES:
            raise PolicyFormatError(f"policy {path} is over the limit of {MAX_POLICY_BYTES} bytes")
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyFormatError(f"policy {path} is not UTF-8") from None
        return cls.from_yaml(text)

    @classmethod
    def from_yaml(cls, text: str) -> ReleasePolicy:
        if len(text.encode("utf-8")) > MAX_POLICY_BYTES:
            raise PolicyFormatError(f"policy is over the limit of {MAX_POLICY_BYTES} bytes")
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise PolicyFormatError(f"policy is not valid YAML: {error}") from None
        return cls.from_mapping(document)

    @classmethod
    def from_mapping(cls, document: object) -> ReleasePolicy:
        if not isinstance(document, Mapping):
            raise PolicyFormatError("policy: expected a mapping at the top level")
        _refuse_unknown_fields("policy", document, _TOP_FIELDS)
        version = document.get("version")
        if version != POLICY_VERSION or isinstance(version, bool):
            raise PolicyFormatError(f"version: expected {POLICY_VERSION}, got {version!r}")
        allow_simulated = _boolean(document, "allow_simulated", "allow_simulated")
        raw_rules = document.get("rules", [])
        if not isinstance(raw_rules, list):
            raise PolicyFormatError("rules: expected a list")
        if len(raw_rules) > MAX_RULES:
            raise PolicyFormatError(f"rules: more than {MAX_RULES} rules")
        rules = [_parse_rule(f"rules[{index}]", raw) for index, raw in enumerate(raw_rules)]
        names = [rule.name for rule in rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise PolicyFormatError(f"rules: duplicate rule names {duplicates!r}")
        return cls(allow_simulated=allow_simulated, rules=rules)

    @property
    def allow_simulated(self) -> bool:
        """The global switch: False means simulated evidence is denied and no dev root loads."""
        return self._allow_simulated

    @property
    def rules(self) -> tuple[ReleaseRule, ...]:
        return self._rules

    def evaluate_attestation(self, claims: Claims) -> Decision:
        """Is there any rule this evidence may use? (Opening a session needs one.)"""
        passing, denial = self._rules_accepting(claims)
        if denial is not None:
            return denial
        return Decision(True, f"evidence accepted by rule {passing[0].name}", passing[0].name)

    def evaluate_release(
        self, claims: Claims, kek_uri: str, region: str, producer_id: str
    ) -> Decision:
        """May this evidence have a DEK under ``kek_uri`` for ``region`` and ``producer_id``?"""
        passing, denial = self._rules_accepting(claims)
        if denial is not None:
            return denial
        failures: list[str] = []
        for rule in passing:
            rule_failures = rule.release_failures(kek_uri, region, producer_id)
            if not rule_failures:
                return Decision(True, f"release allowed by rule {rule.name}", rule.name)
            failures.extend(rule_failures)
        return Decision(False, "; ".join(failures))

    def evaluate_named(self, claims: Claims, name: str) -> Decision:
        """May this evidence have the named key ``name``?"""
        passing, denial = self._rules_accepting(claims)
        if denial is not None:
            return denial
        failures: list[str] = []
        for rule in passing:
            rule_failures = rule.named_key_failures(name)
            if not rule_failures:
                return Decision(True, f"named key allowed by rule {rule.name}", rule.name)
            failures.extend(rule_failures)
        return Decision(False, "; ".join(failures))

    def _rules_accepting(self, claims: Claims) -> tuple[list[ReleaseRule], Decision | None]:
        if claims.simulated and not self._allow_simulated:
            return [], Decision(
                False, "simulated evidence not allowed (policy allow_simulated: false)"
            )
        if not self._rules:
            return [], Decision(False, "the policy has no rules (deny by default)")
        passing: list[ReleaseRule] = []
        failures: list[str] = []
        for rule in self._rules:
            rule_failures = rule.attestation_failures(claims)
            if rule_failures:
                failures.extend(rule_failures)
            else:
                passing.append(rule)
        if not passing:
            return [], Decision(False, "; ".join(failures))
        return passing, None


def _matches_any(value: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)


def _refuse_unknown_fields(where: str, document: Mapping, known: frozenset[str]) -> None:
    unknown = sorted(str(key) for key in document if key not in known)
    if unknown:
        raise PolicyFormatError(f"{where}: unknown field(s) {', '.join(unknown)}")


def _boolean(document: Mapping, key: str, field: str) -> bool:
    value = document.get(key, False)
    if not isinstance(value, bool):
        raise PolicyFormatError(f"{field}: expected true or false, got {value!r}")
    return value


def _string_list(document: Mapping, key: str, field: str, *, required: bool) -> tuple[str, ...]:
    if key not in document:
        if required:
            raise PolicyFormatError(f"{field}: required")
        return ()
    value = document[key]
    if not isinstance(value, list):
        raise PolicyFormatError(f"{field}: expected a list")
    if len(value) > MAX_LIST_ITEMS:
        raise PolicyFormatError(f"{field}: more than {MAX_LIST_ITEMS} items")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not 1 <= len(item) <= 512:
            raise PolicyFormatError(f"{field}[{index}]: expected a non-empty string")
    if required and not value:
        raise PolicyFormatError(f"{field}: must not be empty")
    return tuple(value)


def _parse_rule(field: str, raw: object) -> ReleaseRule:
    if not isinstance(raw, Mapping):
        raise PolicyFormatError(f"{field}: expected a mapping")
    _refuse_unknown_fields(field, raw, _RULE_FIELDS)
    name = raw.get("name")
    if not isinstance(name, str) or not _RULE_NAME.match(name):
        raise PolicyFormatError(f"{field}.name: expected a name of letters, digits, '.', '_', '-'")
    tees = _string_list(raw, "tee", f"{field}.tee", required=True)
    for index, tee in enumerate(tees):
        if tee not in KNOWN_TEES:
            raise PolicyFormatError(
                f"{field}.tee[{index}]: unknown TEE {tee!r} "
                f"(known: {', '.join(sorted(KNOWN_TEES))})"
            )
    allow_simulated = _boolean(raw, "allow_simulated", f"{field}.allow_simulated")
    measurements = _parse_measurements(f"{field}.measurements", raw, allow_simulated)
    regions = _string_list(raw, "regions", f"{field}.regions", required=False)
    for index, region in enumerate(regions):
        if not _REGION.match(region):
            raise PolicyFormatError(f"{field}.regions[{index}]: not a region name: {region!r}")
    return ReleaseRule(
        name=name,
        tee=tees,
        allow_simulated=allow_simulated,
        debug=_boolean(raw, "debug", f"{field}.debug"),
        measurements=measurements,
        min_tcb=_parse_min_tcb(f"{field}.min_tcb", raw.get("min_tcb", {})),
        regions=regions,
        keks=_string_list(raw, "keks", f"{field}.keks", required=False),
        named_keys=_string_list(raw, "named_keys", f"{field}.named_keys", required=False),
        producers=_string_list(raw, "producers", f"{field}.producers", required=False),
    )


def _parse_measurements(field: str, raw: Mapping, allow_simulated: bool) -> tuple[str, ...]:
    measurements = _string_list(raw, "measurements", field, required=True)
    normalized = []
    for index, measurement in enumerate(measurements):
        if measurement == ANY_MEASUREMENT:
            if not allow_simulated:
                raise PolicyFormatError(
                    f"{field}[{index}]: '*' is allowed only in a rule with allow_simulated: true "
                    "(and then matches simulated evidence only)"
                )
            normalized.append(ANY_MEASUREMENT)
        elif _HEX.match(measurement):
            normalized.append(measurement.lower())
        else:
            raise PolicyFormatError(f"{field}[{index}]: expected hex digits or '*'")
    return tuple(normalized)


def _parse_min_tcb(field: str, raw: object) -> Mapping[str, int]:
    if not isinstance(raw, Mapping):
        raise PolicyFormatError(f"{field}: expected a mapping of component -> minimum")
    minimums: dict[str, int] = {}
    for component, minimum in raw.items():
        if not isinstance(component, str) or not _TCB_COMPONENT.match(component):
            raise PolicyFormatError(f"{field}: bad component name {component!r}")
        if (
            isinstance(minimum, bool)
            or not isinstance(minimum, int)
            or not 0 <= minimum <= 0xFFFFFFFF
        ):
            raise PolicyFormatError(f"{field}.{component}: expected an integer 0..4294967295")
        minimums[component] = minimum
    return minimums
