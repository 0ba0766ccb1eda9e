"""`ConfidentialSpaceVerifier`: Google Confidential Space OIDC attestation tokens.

What it does: verifies the token that Google's attestation service issues to a Confidential
Space workload (issuer ``https://confidentialcomputing.googleapis.com``, keys from the
``jwks_uri`` of its OpenID configuration through `JwksCache`, RS256 only, the configured
audience, exp/nbf/iat with a small leeway), requires ``swname`` CONFIDENTIAL_SPACE and our
binding in ``eat_nonce``, and maps the claims to `Claims` (tee "confidential-space"):
``submods.container.image_digest`` is the measurement, ``dbgstat`` other than
``disabled-since-boot`` means debug, ``hwmodel`` names the hardware.

The binding: Confidential Space accepts nonces of 10..74 bytes, too short for the 64-byte
report_data in hex, so the worker asks for the nonce `eat_nonce_for(report_data)` =
lowercase hex of SHA-256(report_data) (64 characters), and ``eat_nonce`` (a string or a list)
must contain it.

What it does not: require ``support_attributes`` STABLE, a zone or a project — those are in
``platform`` for the policy; or verify the VM's hardware evidence (Google's service did).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from keybroker.attestation.claims import Claims
from keybroker.attestation.errors import (
    EvidenceFormatError,
    EvidenceVerificationError,
    ReportDataMismatchError,
    TrustStoreError,
)
from keybroker.attestation.jwks import (
    DEFAULT_LEEWAY_SECONDS,
    Getter,
    JwksCache,
    http_getter,
)
from keybroker.attestation.jwt_tokens import (
    REPORT_DATA_SIZE,
    check_token_evidence_request,
    verify_rs256_token,
)

__all__ = [
    "CONFIDENTIAL_SPACE_ISSUER",
    "HARDWARE_MODELS",
    "ConfidentialSpaceVerifier",
    "eat_nonce_for",
]

CONFIDENTIAL_SPACE_ISSUER = "https://confidentialcomputing.googleapis.com"
HARDWARE_MODELS = {"GCP_AMD_SEV": "sev", "GCP_AMD_SEV_SNP": "sev-snp",
                   "GCP_INTEL_TDX": "tdx"}
SOFTWARE_NAME = "CONFIDENTIAL_SPACE"
DEBUG_DISABLED = "disabled-since-boot"
MAX_NONCES = 6
_IMAGE_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


def eat_nonce_for(report_data: bytes) -> str:
    """The Confidential Space nonce that binds a 64-byte report_data: hex SHA-256 of it."""
    if not isinstance(report_data, bytes) or len(report_data) != REPORT_DATA_SIZE:
        raise ValueError("report_data must be exactly 64 bytes")
    return hashlib.sha256(report_data).hexdigest()


def _string(claims: Mapping[str, Any], name: str, where: str = "") -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 1024:
        raise EvidenceFormatError(f"Confidential Space claim {where}{name!r} must be a string")
    return value


def _strings(claims: Mapping[str, Any], name: str, where: str = "") -> list[str]:
    value = claims.get(name, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > 64 or \
            not all(isinstance(item, str) and len(item) <= 1024 for item in value):
        raise EvidenceFormatError(
            f"Confidential Space claim {where}{name!r} must be a list of strings")
    return list(value)


def _object(claims: Mapping[str, Any], name: str, where: str = "") -> dict[str, Any]:
    value = claims.get(name, {})
    if not isinstance(value, dict):
        raise EvidenceFormatError(f"Confidential Space claim {where}{name!r} must be an object")
    return value


class ConfidentialSpaceVerifier:
    """Verifies Confidential Space attestation tokens minted for ``audience``.

    ``keys`` defaults to a `JwksCache` over the issuer's OpenID configuration, fetched with
    ``getter`` (default: HTTPS via httpx) and cached in ``cache_file`` when given.
    """

    tee = "confidential-space"

    def __init__(self, audience: str, *, issuer: str = CONFIDENTIAL_SPACE_ISSUER,
                 keys: JwksCache | None = None, getter: Getter | None = None,
                 cache_file: Path | str | None = None,
                 clock: Callable[[], float] = time.time,
                 leeway_seconds: float = DEFAULT_LEEWAY_SECONDS) -> None:
        if not isinstance(audience, str) or not audience or len(audience) > 512:
            raise TrustStoreError("Confidential Space audience must be a non-empty string")
        self.audience = audience
        self.issuer = issuer
        self._keys = keys or JwksCache(
            discovery_url=f"{issuer}/.well-known/openid-configuration", expected_issuer=issuer,
            getter=getter or http_getter(), cache_file=cache_file)
        self._clock = clock
        self._leeway = leeway_seconds

    def evaluate(self, evidence: bytes, expected_report_data: bytes, *,
                 endorsements: Mapping[str, bytes]) -> Claims:
        """Claims for a valid token whose eat_nonce carries our binding, else raise."""
        check_token_evidence_request(expected_report_data, endorsements, "Confidential Space")
        payload = verify_rs256_token(evidence, self._keys, issuer=self.issuer,
                                     audience=self.audience, now=self._clock(),
                                     leeway_seconds=self._leeway)
        software = _string(payload, "swname")
        if software != SOFTWARE_NAME:
            raise EvidenceVerificationError(
                f"token swname {software!r} is not {SOFTWARE_NAME!r}")
        hardware_model = _string(payload, "hwmodel")
        if hardware_model not in HARDWARE_MODELS:
            raise EvidenceVerificationError(
                f"token hwmodel {hardware_model!r} is not one of {sorted(HARDWARE_MODELS)}")
        self._check_nonce(payload, expected_report_data)
        return self._claims(payload, hardware_model, expected_report_data)

    @staticmethod
    def _check_nonce(payload: Mapping[str, Any], expected_report_data: bytes) -> None:
        nonces = _strings(payload, "eat_nonce")
        if not nonces:
            raise ReportDataMismatchError("token carries no eat_nonce")
        if len(nonces) > MAX_NONCES:
            raise EvidenceFormatError(f"token carries more than {MAX_NONCES} nonces")
        expected = eat_nonce_for(expected_report_data).encode("ascii")
        if not any(hmac.compare_digest(nonce.encode("utf-8"), expected) for nonce in nonces):
            raise ReportDataMismatchError(
                "token eat_nonce does not contain the expected report_data binding")

    def _claims(self, payload: Mapping[str, Any], hardware_model: str,
                report_data: bytes) -> Claims:
        submods = _object(payload, "submods")
        container = _object(submods, "container", "submods.")
        gce = _object(submods, "gce", "submods.")
        space = _object(submods, "confidential_space", "submods.")
        digest = _string(container, "image_digest", "submods.container.")
        match = _IMAGE_DIGEST.match(digest or "")
        if match is None:
            raise EvidenceVerificationError(
                "token submods.container.image_digest is missing or not sha256:<64 hex>")
        debug_status = _string(payload, "dbgstat")
        secure_boot = payload.get("secboot")
        if secure_boot is not None and not isinstance(secure_boot, bool):
            raise EvidenceFormatError("Confidential Space claim 'secboot' must be true or false")
        versions = _strings(payload, "swversion")
        tcb = {"swversion": int(versions[0])} if versions and versions[0].isdigit() else {}
        platform = {
            "hw": HARDWARE_MODELS[hardware_model],
            "hwmodel": hardware_model,
            "swname": payload["swname"],
            "swversion": versions,
            "dbgstat": debug_status,
            "secboot": secure_boot,
            "oemid": payload.get("oemid") if isinstance(payload.get("oemid"), int) else None,
            "support_attributes": _strings(space, "support_attributes",
                                           "submods.confidential_space."),
            "zone": _string(gce, "zone", "submods.gce."),
            "project_id": _string(gce, "project_id", "submods.gce."),
            "project_number": _string(gce, "project_number", "submods.gce."),
            "instance_name": _string(gce, "instance_name", "submods.gce."),
            "instance_id": _string(gce, "instance_id", "submods.gce."),
            "image_reference": _string(container, "image_reference", "submods.container."),
            "image_digest": digest,
            "restart_policy": _string(container, "restart_policy", "submods.container."),
            "image_id": _string(container, "image_id", "submods.container."),
            "google_service_accounts": _strings(payload, "google_service_accounts"),
            "subject": _string(payload, "sub"),
        }
        return Claims(
            tee="confidential-space",
            report_version=0,
            debug=debug_status != DEBUG_DISABLED,
            measurement=match.group(1),
            report_data=report_data,
            product=None,
            signing_key=None,
            tcb=tcb,
            simulated=False,
            platform=platform,
            raw=dict(payload),
        )
