"""The release policy: which verified TEEs may receive which keys. YAML, deny by default.

The policy sees only normalized ``Claims`` (never raw evidence) and the request's KEK,
region, producer or key name. Every decision carries a reason that names the failed checks
("measurement not allowed by rule prod-workers", "tcb_status 'OutOfDate' not allowed by rule
tdx-workers ...") and the rule that allowed it. The grammar is in docs/PROTOCOL.md
("Release policy"): common fields in `rule`, SEV-SNP and TDX checks in `hardware`, Azure,
MAA and Confidential Space checks in `cloud`, the document and its decisions in `document`.

Simulated evidence (a chain anchored at a development root) passes only when both the
policy's global ``allow_simulated`` and the rule's own ``allow_simulated`` are true. A rule's
measurement ``"*"`` is allowed only in such a rule and matches simulated evidence only.

This package does not verify evidence, talk to a KMS or write the ledger.
"""

from __future__ import annotations

from keybroker.policy.cloud import AzureRequirements, ConfidentialSpaceRequirements
from keybroker.policy.document import MAX_POLICY_BYTES, MAX_RULES, Decision, ReleasePolicy
from keybroker.policy.errors import PolicyError, PolicyFormatError
from keybroker.policy.fields import MAX_LIST_ITEMS
from keybroker.policy.hardware import SnpRequirements, TdxRequirements, hardware_of
from keybroker.policy.rule import ANY_MEASUREMENT, ReleaseRule

__all__ = [
    "ANY_MEASUREMENT",
    "MAX_LIST_ITEMS",
    "MAX_POLICY_BYTES",
    "MAX_RULES",
    "AzureRequirements",
    "ConfidentialSpaceRequirements",
    "Decision",
    "PolicyError",
    "PolicyFormatError",
    "ReleasePolicy",
    "ReleaseRule",
    "SnpRequirements",
    "TdxRequirements",
    "hardware_of",
]
