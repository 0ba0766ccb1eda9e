"""`MaaVerifier`: Microsoft Azure Attestation tokens for Azure confidential VMs.

What it does: verifies an MAA JWT (RS256 only, keys from the instance's ``{issuer}/certs``
JWKS through `JwksCache`, issuer pinned by configuration, exp/nbf/iat with a small leeway),
then maps its claims to `Claims` (tee "maa"). The TEE claims are read from
``x-ms-isolation-tee`` (guest attestation of an Azure CVM) or from the top level (direct
``SevSnpVm`` / ``TdxVm`` attestation); ``x-ms-attestation-type`` must be ``sevsnpvm`` or
``tdxvm``.

The binding: the runtime data the worker sent MAA is the HCL runtime-data JSON, whose
``user-data`` is the hex of the 64-byte report_data (see `azure_cvm.verify`); MAA copies it
into ``x-ms-runtime``, and ``x-ms-runtime["user-data"]`` must decode to exactly
``expected_report_data``.

What it does not: check ``x-ms-compliance-status``, debug, measurements or TCB — they are
in the claims (``platform["compliance_status"]``...) for the policy; verify the hardware
evidence itself (MAA did; we trust MAA's signature); read a location: MAA's own claims name
no VM region (its instance's region is not the VM's), so the policy reads one only from a
top-level claim the operator's MAA policy issues, named by a rule's ``maa_location_claim``
(``keybroker.policy.location``; the whole payload is in ``Claims.raw``).
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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

__all__ = ["ATTESTATION_TYPES", "MaaVerifier"]

ATTESTATION_TYPES = {"sevsnpvm": "sev-snp", "tdxvm": "tdx"}
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2})+$")
_SNP_TCB = {
    "bootloader": "x-ms-sevsnpvm-bootloader-svn",
    "tee": "x-ms-sevsnpvm-tee-svn",
    "snp": "x-ms-sevsnpvm-snpfw-svn",
    "microcode": "x-ms-sevsnpvm-microcode-svn",
}
_SNP_HEX = {
    "host_data": "x-ms-sevsnpvm-hostdata",
    "id_key_digest": "x-ms-sevsnpvm-idkeydigest",
    "author_key_digest": "x-ms-sevsnpvm-authorkeydigest",
    "family_id": "x-ms-sevsnpvm-familyId",
    "image_id": "x-ms-sevsnpvm-imageId",
    "report_id": "x-ms-sevsnpvm-reportid",
    "chip_id": "x-ms-sevsnpvm-chipid",
    "hw_report_data": "x-ms-sevsnpvm-reportdata",
}
_SNP_INT = {"vmpl": "x-ms-sevsnpvm-vmpl", "guest_svn": "x-ms-sevsnpvm-guestsvn"}
_SNP_BOOL = {"smt_allowed": "x-ms-sevsnpvm-smt-allowed",
             "migration_allowed": "x-ms-sevsnpvm-migration-allowed"}
_TDX_HEX = {
    "rtmr0": "tdx_rtmr0", "rtmr1": "tdx_rtmr1", "rtmr2": "tdx_rtmr2", "rtmr3": "tdx_rtmr3",
    "mrconfigid": "tdx_mrconfigid", "mrowner": "tdx_mrowner",
    "mrownerconfig": "tdx_mrownerconfig", "mrseam": "tdx_mrseam",
    "mrsignerseam": "tdx_mrsignerseam", "td_attributes": "tdx_td_attributes",
    "xfam": "tdx_xfam", "seam_attributes": "tdx_seam_attributes",
    "tee_tcb_svn": "tdx_tee_tcb_svn", "hw_report_data": "tdx_report_data",
}


def _hex(claims: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or len(value) > 1024 or not _HEX.match(value):
        raise EvidenceFormatError(f"MAA claim {name!r} must be a hex string")
    return value.lower()


def _integer(claims: Mapping[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise EvidenceFormatError(f"MAA claim {name!r} must be a non-negative integer")
    return value


def _boolean(claims: Mapping[str, Any], name: str, *, required: bool = False) -> bool | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, bool):
        raise EvidenceFormatError(f"MAA claim {name!r} must be true or false")
    return value


def _check_issuer(issuer: str) -> str:
    parts = urlsplit(issuer)
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("",) \
            or parts.query or parts.fragment:
        raise TrustStoreError(f"MAA issuer {issuer!r} must be https://<instance> with no path")
    return issuer


class MaaVerifier:
    """Verifies MAA tokens from one pinned MAA instance (``issuer``).

    ``keys`` defaults to a `JwksCache` over ``{issuer}/certs`` fetched with ``getter``
    (default: HTTPS via httpx), cached in ``cache_file`` when given.
    """

    tee = "maa"

    def __init__(self, issuer: str, *, keys: JwksCache | None = None,
                 getter: Getter | None = None, cache_file: Path | str | None = None,
                 clock: Callable[[], float] = time.time,
                 leeway_seconds: float = DEFAULT_LEEWAY_SECONDS) -> None:
        self.issuer = _check_issuer(issuer)
        self._keys = keys or JwksCache(jwks_uri=f"{issuer}/certs",
                                       getter=getter or http_getter(), cache_file=cache_file)
        self._clock = clock
        self._leeway = leeway_seconds

    def evaluate(self, evidence: bytes, expected_report_data: bytes, *,
                 endorsements: Mapping[str, bytes]) -> Claims:
        """Claims for a valid MAA token whose runtime user-data is ``expected_report_data``."""
        check_token_evidence_request(expected_report_data, endorsements, "MAA")
        payload = verify_rs256_token(evidence, self._keys, issuer=self.issuer, audience=None,
                                     now=self._clock(), leeway_seconds=self._leeway)
        tee_claims = payload.get("x-ms-isolation-tee", payload)
        if not isinstance(tee_claims, dict):
            raise EvidenceFormatError("MAA claim 'x-ms-isolation-tee' must be an object")
        attestation_type = tee_claims.get("x-ms-attestation-type")
        if attestation_type not in ATTESTATION_TYPES:
            raise EvidenceVerificationError(
                f"MAA attestation type {attestation_type!r} is not one of "
                f"{sorted(ATTESTATION_TYPES)}")
        runtime = tee_claims.get("x-ms-runtime", payload.get("x-ms-runtime"))
        self._check_binding(runtime, expected_report_data)
        if attestation_type == "sevsnpvm":
            return self._snp_claims(payload, tee_claims, runtime, expected_report_data)
        return self._tdx_claims(payload, tee_claims, runtime, expected_report_data)

    @staticmethod
    def _check_binding(runtime: object, expected_report_data: bytes) -> None:
        if not isinstance(runtime, dict):
            raise ReportDataMismatchError("MAA token has no x-ms-runtime object")
        user_data = runtime.get("user-data")
        if not isinstance(user_data, str) or len(user_data) != 2 * REPORT_DATA_SIZE \
                or not _HEX.match(user_data):
            raise ReportDataMismatchError(
                "MAA x-ms-runtime user-data is missing or not 64 bytes of hex")
        if not hmac.compare_digest(bytes.fromhex(user_data), expected_report_data):
            raise ReportDataMismatchError(
                "MAA x-ms-runtime user-data does not match the expected report_data")

    def _common_platform(self, payload: Mapping[str, Any], tee_claims: Mapping[str, Any],
                         runtime: Mapping[str, Any], hardware: str) -> dict[str, object]:
        compliance = tee_claims.get("x-ms-compliance-status")
        if compliance is not None and not isinstance(compliance, str):
            raise EvidenceFormatError("MAA claim 'x-ms-compliance-status' must be a string")
        configuration = runtime.get("vm-configuration", {})
        return {
            "hw": hardware,
            "issuer": self.issuer,
            "attestation_type": tee_claims["x-ms-attestation-type"],
            "compliance_status": compliance,
            "guest_attestation": "x-ms-isolation-tee" in payload,
            "vm_configuration": configuration if isinstance(configuration, dict) else {},
            "secure_boot": _boolean(payload, "secureboot"),
            "azure_vm_id": payload.get("x-ms-azurevm-vmid")
            if isinstance(payload.get("x-ms-azurevm-vmid"), str) else None,
        }

    def _snp_claims(self, payload: Mapping[str, Any], tee_claims: Mapping[str, Any],
                    runtime: Mapping[str, Any], report_data: bytes) -> Claims:
        measurement = _hex(tee_claims, "x-ms-sevsnpvm-launchmeasurement", required=True)
        assert measurement is not None
        if len(measurement) != 96:
            raise EvidenceFormatError("MAA x-ms-sevsnpvm-launchmeasurement is not 48 bytes")
        debug = _boolean(tee_claims, "x-ms-sevsnpvm-is-debuggable", required=True)
        tcb = {name: value for name, claim in _SNP_TCB.items()
               if (value := _integer(tee_claims, claim)) is not None}
        platform = self._common_platform(payload, tee_claims, runtime, "sev-snp")
        platform.update({name: _hex(tee_claims, claim) for name, claim in _SNP_HEX.items()})
        platform.update({name: _integer(tee_claims, claim) for name, claim in _SNP_INT.items()})
        platform.update({name: _boolean(tee_claims, claim) for name, claim in _SNP_BOOL.items()})
        return Claims(tee="maa", report_version=0, debug=bool(debug), measurement=measurement,
                      report_data=report_data, product=None, signing_key=None, tcb=tcb,
                      simulated=False, platform=platform, raw=dict(payload))

    def _tdx_claims(self, payload: Mapping[str, Any], tee_claims: Mapping[str, Any],
                    runtime: Mapping[str, Any], report_data: bytes) -> Claims:
        measurement = _hex(tee_claims, "tdx_mrtd", required=True)
        assert measurement is not None
        if len(measurement) != 96:
            raise EvidenceFormatError("MAA tdx_mrtd is not 48 bytes")
        debug = _boolean(tee_claims, "tdx_td_attributes_debug", required=True)
        platform = self._common_platform(payload, tee_claims, runtime, "tdx")
        platform.update({name: _hex(tee_claims, claim) for name, claim in _TDX_HEX.items()})
        svn = platform.get("tee_tcb_svn")
        tcb = ({f"tee_tcb_svn_{index:02d}": value
                for index, value in enumerate(bytes.fromhex(svn))}
               if isinstance(svn, str) else {})
        return Claims(tee="maa", report_version=0, debug=bool(debug), measurement=measurement,
                      report_data=report_data, product=None, signing_key=None, tcb=tcb,
                      simulated=False, platform=platform, raw=dict(payload))
