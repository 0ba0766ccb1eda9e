"""The policy document: load and validate ``policy.yaml``, and answer the broker's questions.

What it does: `ReleasePolicy` reads the YAML (at most `MAX_POLICY_BYTES`, version 1, at most
`MAX_RULES` rules with unique names) and answers three questions with a `Decision`: may this
evidence open a session (`evaluate_attestation`), may it have this DEK (`evaluate_release`),
may it have this named key (`evaluate_named`). A denial's reason lists every failed check of
every rule. Simulated evidence needs the global ``allow_simulated`` and the rule's own.
What it does not: verify evidence, talk to a KMS or write the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from keybroker.bounded_read import read_bounded
from keybroker.policy.errors import PolicyFormatError
from keybroker.policy.fields import boolean, refuse_unknown_fields
from keybroker.policy.rule import ReleaseRule, parse_rule

if TYPE_CHECKING:
    from keybroker.attestation.claims import Claims

__all__ = ["MAX_POLICY_BYTES", "MAX_RULES", "POLICY_VERSION", "Decision", "ReleasePolicy"]

POLICY_VERSION = 1
MAX_POLICY_BYTES = 256 * 1024
MAX_RULES = 256
_TOP_FIELDS = frozenset({"version", "allow_simulated", "rules"})


@dataclass(frozen=True)
class Decision:
    """The outcome of one policy question. ``rule`` names the allowing rule, if any."""

    allowed: bool
    reason: str
    rule: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"allowed": self.allowed, "reason": self.reason, "rule": self.rule}


class ReleasePolicy:
    """A validated policy. Immutable; load a new one to change it."""

    def __init__(self, *, allow_simulated: bool, rules: Sequence[ReleaseRule]) -> None:
        self._allow_simulated = allow_simulated
        self._rules = tuple(rules)

    @classmethod
    def load(cls, path: Path) -> ReleasePolicy:
        path = Path(path)
        content = read_bounded(
            path, MAX_POLICY_BYTES, PolicyFormatError,
            cannot_read=f"cannot read policy {path}",
            too_large=f"policy {path} is over the limit of {MAX_POLICY_BYTES} bytes")
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
        refuse_unknown_fields("policy", document, _TOP_FIELDS)
        version = document.get("version")
        if version != POLICY_VERSION or isinstance(version, bool):
            raise PolicyFormatError(f"version: expected {POLICY_VERSION}, got {version!r}")
        allow_simulated = boolean(document, "allow_simulated", "allow_simulated")
        raw_rules = document.get("rules", [])
        if not isinstance(raw_rules, list):
            raise PolicyFormatError("rules: expected a list")
        if len(raw_rules) > MAX_RULES:
            raise PolicyFormatError(f"rules: more than {MAX_RULES} rules")
        rules = [parse_rule(f"rules[{index}]", raw) for index, raw in enumerate(raw_rules)]
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

    @property
    def tees(self) -> frozenset[str]:
        """Every TEE kind some rule accepts (the broker needs verifiers for these)."""
        return frozenset(tee for rule in self._rules for tee in rule.tee)

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
            rule_failures = (rule.release_failures(kek_uri, region, producer_id)
                             + rule.location_failures(claims, region))
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
