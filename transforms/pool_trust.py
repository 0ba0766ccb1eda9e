"""Whether a pool endpoint is an attested pool worker: its evidence, verified here.

What it does: ``PoolTrust`` names what a Beam worker trusts (the release policy the broker
enforces, read when the pipeline is built and shipped with it, and for the simulated TEE the
dev chain, loaded only when that policy's ``allow_simulated`` is true, as the broker does).
``PoolVerifier.verify`` checks a pool worker's attestation answer for a nonce this side
drew: the evidence is verified with the broker's own verifier code
(``keybroker.service.verifiers``) against the report_data that binds the nonce and the
worker's channel key (``enclave_workers.pool.channel``), and the verified claims must pass
the policy's ``evaluate_attestation`` (the question the broker asks before it opens a
session). Anything else raises ``PoolAttestationError``, and the caller sends that endpoint
nothing. The verdict carries the worker's attested location, read from the verified claims as
the matching rule's ``worker_locations`` reads it (``keybroker.policy.location``), so residency
preflight can hold it against the map; with ``PoolTrust.worker_locations`` set, a worker
attested elsewhere (or nowhere) is refused here too, on every handshake.

What it does not: no network (``pool_client`` asks), no key release; it does not consult
the broker (a signed attestation result from the broker could replace this check).
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

from enclave_workers.pool.channel import channel_binding
from envelope import TEE_PUBLIC_KEY_LENGTH
from keybroker.attestation.claims import Claims
from keybroker.attestation.errors import AttestationError
from keybroker.attestation.jwks import Getter
from keybroker.attestation.verifier import Verifier
from keybroker.policy import MAX_POLICY_BYTES, PolicyError, ReleasePolicy
from keybroker.policy.location import attested_location
from keybroker.service.verifiers import (
    TrustMaterial,
    embedded_intel_root,
    verifiers_from_material,
)

from .errors import TransformConfigError, TransformError

__all__ = ["PoolAttestationError", "PoolTrust", "PoolVerifier", "VerifiedPool"]


class PoolAttestationError(TransformError):
    """An endpoint whose attestation does not verify, or whose claims the policy refuses."""


@dataclass(frozen=True)
class VerifiedPool:
    """What a verified attestation answer establishes about one pool worker."""

    channel_public_key: bytes
    spec_fingerprint: str
    output_format: str
    tee: str
    rule: str | None
    simulated: bool
    location: str | None = None     # attested (None: the evidence does not say)


@dataclass(frozen=True)
class PoolTrust:
    """The policy a pool worker must satisfy (its YAML text), and the dev chain for simulated
    evidence. The text travels with the pipeline, so workers need no copy of the file."""

    policy_yaml: str
    dev_tee_dir: str | None = None
    confidential_space_audience: str | None = None
    dev_tdx_root: str | None = None     # the dev TDX root (root.pem) of simulated TDX pools
    # Where a pool worker must be attested to be (fnmatch patterns, lowercase); None: anywhere.
    worker_locations: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.policy_yaml.strip():
            raise TransformConfigError("remote mode needs the release policy the pool must "
                                       "satisfy (--pool_policy)")
        self._policy()   # a bad policy fails when the pipeline is built, not on a worker

    @classmethod
    def from_file(cls, policy_path: str, dev_tee_dir: str | None = None, *,
                  confidential_space_audience: str | None = None,
                  dev_tdx_root: str | None = None) -> PoolTrust:
        """Read the policy (any Beam filesystem path) when the pipeline is built."""
        if not policy_path:
            raise TransformConfigError("remote mode needs the release policy the pool must "
                                       "satisfy (--pool_policy)")
        try:
            with FileSystems.open(policy_path) as handle:
                raw = handle.read(MAX_POLICY_BYTES + 1)
        except (OSError, BeamIOError) as exc:
            raise TransformConfigError(f"pool policy {policy_path}: {exc}") from None
        if len(raw) > MAX_POLICY_BYTES:
            raise TransformConfigError(f"pool policy {policy_path} is over {MAX_POLICY_BYTES} "
                                       "bytes")
        return cls(raw.decode("utf-8", errors="replace"), dev_tee_dir,
                   confidential_space_audience or None, dev_tdx_root or None)

    def _policy(self) -> ReleasePolicy:
        try:
            return ReleasePolicy.from_yaml(self.policy_yaml)
        except PolicyError as exc:
            raise TransformConfigError(f"pool policy: {exc}") from None

    def verifier(self, *, jwks_getter: Getter | None = None) -> PoolVerifier:
        """The verifier; ``jwks_getter`` fetches token keys (default: HTTPS, as the broker)."""
        policy = self._policy()
        simulated = policy.allow_simulated
        material = TrustMaterial(
            dev_chain_dir=Path(self.dev_tee_dir) if self.dev_tee_dir and simulated else None,
            tdx_dev_root_file=(Path(self.dev_tdx_root) if self.dev_tdx_root and simulated
                               else None),
            confidential_space_audience=self.confidential_space_audience)
        return PoolVerifier(policy, verifiers_from_material(
            material, tees=policy.tees | {"sev-snp"}, jwks_getter=jwks_getter),
            worker_locations=self.worker_locations)


def _b64(answer: Mapping[str, Any], name: str) -> bytes:
    try:
        return base64.b64decode(answer[name], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise PoolAttestationError(f"attestation answer has no valid {name}") from None


class PoolVerifier:
    """Verifies pool workers' attestation answers against one policy and its verifiers."""

    def __init__(self, policy: ReleasePolicy, verifiers: Mapping[str, Verifier], *,
                 worker_locations: Sequence[str] | None = None) -> None:
        self._policy = policy
        self._verifiers = dict(verifiers)
        self._locations = (None if worker_locations is None
                           else tuple(p.lower() for p in worker_locations))

    def _verifier_for(self, tee: object, evidence: bytes) -> Verifier | None:
        """The verifier for ``tee``; for TDX without one, anchored at the pinned Intel SGX
        Root CA that the quote's PCK chain carries (a root that is not the pin is refused)."""
        if not isinstance(tee, str):
            return None
        verifier = self._verifiers.get(tee)
        if verifier is None and tee == "tdx" and "tdx" in self._policy.tees:
            try:
                roots = embedded_intel_root(tee, evidence, required=False)
            except AttestationError as exc:
                raise PoolAttestationError(f"pool evidence refused: {exc}") from None
            if roots:
                verifier = verifiers_from_material(TrustMaterial(tdx_roots=roots),
                                                   tees={"tdx"}).get("tdx")
        return verifier

    def verify(self, answer: Mapping[str, Any], nonce: bytes) -> VerifiedPool:
        tee = answer.get("tee")
        evidence = _b64(answer, "evidence")
        verifier = self._verifier_for(tee, evidence)
        if verifier is None:
            raise PoolAttestationError(f"no verifier for the pool's TEE {tee!r}")
        channel_key = _b64(answer, "channel_public_key")
        if len(channel_key) != TEE_PUBLIC_KEY_LENGTH:
            raise PoolAttestationError("the pool's channel key has the wrong length")
        raw_endorsements = answer.get("endorsements")
        if not isinstance(raw_endorsements, Mapping):
            raise PoolAttestationError("attestation answer has no endorsements mapping")
        endorsements = {str(name): _b64(raw_endorsements, name) for name in raw_endorsements}
        try:
            claims = verifier.evaluate(evidence, channel_binding(nonce, channel_key),
                                       endorsements=endorsements)
        except AttestationError as exc:
            raise PoolAttestationError(f"pool evidence refused: {type(exc).__name__}: {exc}"
                                       ) from None
        decision = self._policy.evaluate_attestation(claims)
        if not decision.allowed:
            raise PoolAttestationError(f"the policy refuses the pool worker: {decision.reason}")
        location = self._location(claims, decision.rule)
        if self._locations is not None and (location is None or not any(
                fnmatch.fnmatchcase(location, pattern) for pattern in self._locations)):
            raise PoolAttestationError(
                f"the pool worker is attested in {location or 'no location'}; allowed: "
                f"{', '.join(self._locations)}")
        return VerifiedPool(channel_key, str(answer.get("spec_fingerprint", "")),
                            str(answer.get("output_format", "")), tee, decision.rule,
                            bool(getattr(claims, "simulated", False)), location)

    def _location(self, claims: Claims, rule_name: str | None) -> str | None:
        """Where the worker is, as the rule that admitted it reads it (its MAA claim)."""
        for rule in self._policy.rules:
            if rule.name == rule_name:
                return rule.worker_locations.location_of(claims)
        return attested_location(claims)
