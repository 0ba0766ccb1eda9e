"""Offline verification of an output's custody statement: digest, signature chain, policy, ledger.

What it does: ``verify_output`` checks one output file against its statement
(``<output>.intoto.json``, written beside it; docs/FORMAT.md "Custody statements") with only
the broker's public key, and returns a ``CustodyVerdict`` that names every check and every
reason it failed:

- **digest**: the file's SHA-256 and name are the statement's subject (a changed byte, or a
  statement moved to another output, fails here), and it lies in the sink the statement
  names (``<region>/<name>``: an output moved to another region's directory fails);
- **chain**: the broker's signed attestation result embedded in the statement verifies with
  the broker key and lists a ``provenance`` key; the statement's DSSE signature verifies with
  exactly that key (a statement signed by any key the evidence did not bind fails); the
  claims the statement repeats are the signed ones;
- **inputs**: the listed envelope ids hash to the stated Merkle root and count;
- **policy** (``CustodyPolicy``, optional): the TEE type, measurement, simulation and spec
  fingerprint are ones the policy allows;
- **ledger**: the broker's signed ledger head in the statement verifies, and agrees with the
  given anchors (signed checkpoints: the same first entry, the same head at the same length,
  and at least one anchor at or after it); with a ledger at hand, ``check_anchor`` (the one
  ``sealbeam audit verify --anchor`` uses) confirms the ledger still holds that head.

What it does not: it trusts nothing in the statement that a signature does not cover, opens
no envelope and calls no service.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from enclave_workers.provenance import (
    CUSTODY_PREDICATE_TYPE,
    PROVENANCE_KEY_LABEL,
    STATEMENT_PAYLOAD_TYPE,
    STATEMENT_TYPE,
    merkle_root,
    signer_key_id,
)
from keybroker.bounded_read import read_bounded
from keybroker.checkpoints import Checkpoint, CheckpointError, check_anchor, verify_checkpoint
from keybroker.grants import GrantError, verify_attestation_result
from keybroker.identity import BrokerPublicKey, SignatureInvalidError, canonical_json, pae
from transforms.write import STATEMENT_SUFFIX

from .errors import PipelineError

__all__ = ["CHECKS", "CustodyPolicy", "CustodyVerdict", "load_statement", "verify_output"]

MAX_STATEMENT_BYTES = 64 << 20
CHECKS = ("digest", "chain", "inputs", "policy", "ledger")
_HEX64 = frozenset("0123456789abcdef")


class CustodyError(PipelineError):
    """A statement, policy or anchor file cannot be read at all (not a failed check)."""


@dataclass(frozen=True)
class CustodyPolicy:
    """What an auditor accepts: TEE types, measurements, spec fingerprints, simulation.

    YAML or JSON: ``{tees: [sev-snp], measurements: [hex], spec_fingerprints: [hex],
    allow_simulated: false}``; an absent list allows any value of that field.
    """

    tees: tuple[str, ...] | None = None
    measurements: tuple[str, ...] | None = None
    spec_fingerprints: tuple[str, ...] | None = None
    allow_simulated: bool = False

    @classmethod
    def load(cls, path: Path) -> CustodyPolicy:
        try:
            document = yaml.safe_load(Path(path).read_text("utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise CustodyError(f"cannot read custody policy {Path(path).name}: {error}"
                               ) from None
        if not isinstance(document, Mapping):
            raise CustodyError(f"custody policy {Path(path).name}: expected a mapping")
        unknown = sorted(set(document) - {"tees", "measurements", "spec_fingerprints",
                                          "allow_simulated"})
        if unknown:
            raise CustodyError(f"custody policy: unknown field(s) {', '.join(unknown)}")

        def strings(name: str) -> tuple[str, ...] | None:
            value = document.get(name)
            if value is None:
                return None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise CustodyError(f"custody policy: {name} must be a list of strings")
            return tuple(v.lower() for v in value)

        allow = document.get("allow_simulated", False)
        if not isinstance(allow, bool):
            raise CustodyError("custody policy: allow_simulated must be true or false")
        return cls(strings("tees"), strings("measurements"), strings("spec_fingerprints"),
                   allow)

    def refusals(self, claims: Mapping[str, Any], simulated: bool,
                 spec_fingerprint: str) -> list[str]:
        """Every way the (signed) claims and spec fall outside this policy."""
        problems: list[str] = []
        tee = str(claims.get("tee", ""))
        measurement = str(claims.get("measurement", "")).lower()
        if self.tees is not None and tee not in self.tees:
            problems.append(f"TEE type {tee!r} is not one the policy allows")
        if self.measurements is not None and measurement not in self.measurements:
            problems.append(f"measurement {measurement[:16]}... is not one the policy allows")
        if simulated and not self.allow_simulated:
            problems.append("the attestation was simulated and the policy does not allow it")
        if self.spec_fingerprints is not None and \
                spec_fingerprint.lower() not in self.spec_fingerprints:
            problems.append(f"feature spec {spec_fingerprint[:16]}... is not one the policy "
                            "allows")
        return problems


@dataclass
class CustodyVerdict:
    """The outcome for one output: each check (True, False, or None when not run)."""

    output: str
    statement: str
    checks: dict[str, bool | None] = field(default_factory=lambda: dict.fromkeys(CHECKS))
    reasons: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every check that ran holds, and digest, chain, inputs and ledger all ran."""
        required = ("digest", "chain", "inputs", "ledger")
        return not self.reasons and all(self.checks[name] for name in required) and \
            self.checks["policy"] is not False

    def fail(self, check: str, reason: str) -> None:
        self.checks[check] = False
        self.reasons.append(f"{check}: {reason}")

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


def load_statement(path: Path) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    """(DSSE envelope, its payload bytes, the in-toto statement) of a statement file."""
    content = read_bounded(
        path, MAX_STATEMENT_BYTES, CustodyError,
        cannot_read=f"cannot read statement {Path(path).name}",
        too_large=f"statement {Path(path).name} is over {MAX_STATEMENT_BYTES} bytes")
    try:
        envelope = json.loads(content)
        payload = base64.b64decode(str(envelope["payload"]).encode("ascii"), validate=True)
        statement = json.loads(payload)
    except (ValueError, KeyError, TypeError, UnicodeError, binascii.Error, RecursionError):
        raise CustodyError(f"statement {Path(path).name} is not a DSSE envelope of JSON"
                           ) from None
    if not isinstance(envelope, dict) or not isinstance(statement, dict):
        raise CustodyError(f"statement {Path(path).name} is not a DSSE envelope of JSON")
    return envelope, payload, statement


def verify_output(output: Path, *, broker_key: BrokerPublicKey, statement: Path | None = None,
                  policy: CustodyPolicy | None = None, anchors: Iterable[object] = (),
                  ledger: Any = None) -> CustodyVerdict:
    """Check ``output`` against its custody statement; see the module docstring."""
    output = Path(output)
    statement_path = Path(statement) if statement is not None else \
        output.with_name(output.name + STATEMENT_SUFFIX)
    verdict = CustodyVerdict(str(output), str(statement_path))
    envelope, payload, document = load_statement(statement_path)
    predicate = document.get("predicate")
    if document.get("_type") != STATEMENT_TYPE or \
            document.get("predicateType") != CUSTODY_PREDICATE_TYPE or \
            not isinstance(predicate, dict):
        verdict.fail("chain", "not an in-toto Statement v1 with the sealbeam custody predicate")
        return verdict
    _check_digest(verdict, output, document)
    _check_sink(verdict, output, _mapping(predicate.get("output")))
    result = _check_chain(verdict, broker_key, envelope, payload, predicate)
    _check_inputs(verdict, predicate)
    if policy is not None and result is not None:
        refusals = policy.refusals(result.claims, result.simulated,
                                   str(predicate.get("spec_fingerprint", "")))
        for refusal in refusals:
            verdict.fail("policy", refusal)
        if not refusals:
            verdict.checks["policy"] = True
    _check_ledger(verdict, broker_key, predicate, list(anchors), ledger)
    return verdict


def _check_digest(verdict: CustodyVerdict, output: Path, document: Mapping[str, Any]) -> None:
    subjects = document.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1 or \
            not isinstance(subjects[0], dict):
        verdict.fail("digest", "the statement must have exactly one subject")
        return
    subject = subjects[0]
    stated = str(_mapping(subject.get("digest")).get("sha256", ""))
    try:
        actual = _sha256_file(output)
    except OSError as error:
        verdict.fail("digest", f"cannot read the output: {error.strerror}")
        return
    verdict.facts["sha256"] = actual
    if subject.get("name") != output.name:
        verdict.fail("digest", f"the statement is for {subject.get('name')!r}, not "
                     f"{output.name!r} (a statement moved to another output)")
    if not hmac.compare_digest(stated.encode("ascii", "replace"), actual.encode("ascii")):
        verdict.fail("digest", "the output's SHA-256 differs from the statement's subject "
                     "(the output changed, or the statement belongs to another output)")
    if verdict.checks["digest"] is None:
        verdict.checks["digest"] = True


def _check_sink(verdict: CustodyVerdict, output: Path, stated: Mapping[str, Any]) -> None:
    """The output lies where the statement says it was written: ``<region>/<name>``."""
    expected = f"{output.parent.name}/{output.name}"
    if stated.get("sink") != expected or stated.get("region") != output.parent.name:
        verdict.fail("digest", f"the statement places the output at {stated.get('sink')!r}, "
                     f"it lies at {expected!r} (another region's sink)")


def _check_chain(verdict: CustodyVerdict, broker_key: BrokerPublicKey,
                 envelope: Mapping[str, Any], payload: bytes, predicate: Mapping[str, Any]
                 ) -> Any:
    """Statement signed by the provenance key the broker's signed result lists; the result."""
    try:
        result = verify_attestation_result(broker_key, predicate.get("attestation_result"))
    except GrantError as error:
        verdict.fail("chain", f"the embedded attestation result: {error}")
        return None
    verdict.facts.update(session=result.session, policy_rule=result.policy_rule,
                         simulated=result.simulated, tee=result.claims.get("tee"),
                         measurement=result.claims.get("measurement"),
                         spec_fingerprint=predicate.get("spec_fingerprint"),
                         region=_mapping(predicate.get("output")).get("region"),
                         counts=predicate.get("counts"))
    key = result.tee_public_keys.get(PROVENANCE_KEY_LABEL)
    if key is None or len(key) != 32:
        verdict.fail("chain", "the broker's attestation result lists no provenance key: the "
                     "evidence bound no statement key")
        return result
    signatures = envelope.get("signatures")
    if envelope.get("payloadType") != STATEMENT_PAYLOAD_TYPE or \
            not isinstance(signatures, list) or len(signatures) != 1 or \
            not isinstance(signatures[0], dict):
        verdict.fail("chain", "the statement is not a DSSE in-toto envelope with one signature")
        return result
    signature = signatures[0]
    try:
        raw = base64.b64decode(str(signature.get("sig", "")).encode("ascii"), validate=True)
        Ed25519PublicKey.from_public_bytes(key).verify(raw, pae(STATEMENT_PAYLOAD_TYPE,
                                                                payload))
    except (InvalidSignature, ValueError, binascii.Error, UnicodeError):
        verdict.fail("chain", "the statement is not signed by the provenance key that the "
                     "attestation evidence bound")
        return result
    if signature.get("keyid") != signer_key_id(key):
        verdict.fail("chain", "the signature's keyid is not the provenance key's")
    tee = predicate.get("tee")
    claims = tee.get("claims") if isinstance(tee, Mapping) else None
    if not isinstance(claims, Mapping) or not _same_json(claims, result.claims):
        verdict.fail("chain", "the TEE claims in the statement are not the broker's signed ones")
    if verdict.checks["chain"] is None:
        verdict.checks["chain"] = True
    return result


def _check_inputs(verdict: CustodyVerdict, predicate: Mapping[str, Any]) -> None:
    inputs = predicate.get("inputs")
    counts = predicate.get("counts")
    if not isinstance(inputs, Mapping) or not isinstance(counts, Mapping):
        verdict.fail("inputs", "the statement has no inputs or counts")
        return
    count = inputs.get("count")
    ids = inputs.get("envelope_ids")
    verdict.facts["inputs"] = count
    if ids is not None:
        if not isinstance(ids, list) or not all(
                isinstance(i, str) and len(i) == 32 and set(i) <= _HEX64 for i in ids):
            verdict.fail("inputs", "envelope_ids must be 32-digit lowercase hex ids")
            return
        if len(ids) != count or len(set(ids)) != len(ids):
            verdict.fail("inputs", f"{len(ids)} envelope ids listed, count says {count}")
        if merkle_root(ids) != inputs.get("merkle_root"):
            verdict.fail("inputs", "the envelope ids do not hash to the stated Merkle root")
    if counts.get("envelopes_in") != count:
        verdict.fail("inputs", f"counts.envelopes_in {counts.get('envelopes_in')} differs "
                     f"from the {count} inputs")
    if verdict.checks["inputs"] is None:
        verdict.checks["inputs"] = True


def _check_ledger(verdict: CustodyVerdict, broker_key: BrokerPublicKey,
                  predicate: Mapping[str, Any], anchors: list[object], ledger: Any) -> None:
    try:
        head = verify_checkpoint(broker_key, predicate.get("ledger_head"))
    except CheckpointError as error:
        verdict.fail("ledger", f"the statement's ledger head: {error}")
        return
    verdict.facts["ledger_entries"] = head.entries
    verdict.facts["ledger_head"] = head.head
    checkpoints: list[Checkpoint] = []
    for anchor in anchors:
        try:
            checkpoints.append(verify_checkpoint(broker_key, anchor))
        except CheckpointError as error:
            verdict.fail("ledger", f"an anchor: {error}")
    for problem in anchor_conflicts(head, checkpoints):
        verdict.fail("ledger", problem)
    if anchors and not any(c.entries >= head.entries for c in checkpoints):
        verdict.fail("ledger", f"no anchor reaches entry {head.entries} of the statement's "
                     "ledger head")
    if ledger is not None:
        checked = check_anchor(ledger, head)
        if not checked.ok:
            verdict.fail("ledger", f"the ledger no longer holds the statement's head: "
                         f"{checked.problem}")
    if verdict.checks["ledger"] is None:
        verdict.checks["ledger"] = True
    verdict.facts["anchors"] = len(checkpoints)


def anchor_conflicts(head: Checkpoint, anchors: Iterable[Checkpoint]) -> list[str]:
    """Ways signed checkpoints contradict ``head``: another first entry, or another hash at
    the same length (a rewritten or replaced ledger)."""
    problems: list[str] = []
    for anchor in anchors:
        if not hmac.compare_digest(anchor.first, head.first):
            problems.append(f"the anchor of {anchor.entries} entries starts with another "
                            "first entry (the ledger was replaced)")
        elif anchor.entries == head.entries and not hmac.compare_digest(anchor.head, head.head):
            problems.append(f"the anchor of {anchor.entries} entries signed another head "
                            "(the ledger was rewritten)")
    return problems


def _same_json(left: Mapping[str, Any], right: Mapping[str, Any]) -> bool:
    try:
        return canonical_json(left) == canonical_json(right)
    except SignatureInvalidError:          # not plain JSON (NaN): not the signed claims
        return False


def _mapping(value: object) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else an empty one (a malformed field fails its
    check instead of raising)."""
    return value if isinstance(value, Mapping) else {}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
