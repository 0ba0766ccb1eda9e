"""The broker's attestation trust material, as configured in ``broker.yaml`` (``attestation:``).

What it does: `AttestationSettings` names, for each verifier, where its trust comes from —
the AMD KDS cache (and whether it may go online), extra AMD ARK pins, the Intel root directory
and extra Intel root pins, TDX collateral, the dev TDX root (used only when the policy allows
simulated evidence), MAA issuers, the Confidential Space audience, the JWKS cache — and
parses them with bounded, typed checks whose errors name the field. Relative paths are taken
from the settings file's directory. What it does not: read the files or build verifiers
(``keybroker.service.verifiers`` does).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from keybroker.attestation.errors import TrustStoreError
from keybroker.attestation.snp.product import PRODUCTS
from keybroker.settings_fields import checked_section

__all__ = ["AttestationSettings"]

_ATTESTATION_FIELDS = frozenset(
    {
        "amd_kds_cache_dir",
        "amd_kds_offline",
        "amd_crl",
        "extra_amd_ark_pins",
        "intel_root_dir",
        "extra_intel_root_pins",
        "tdx_collateral",
        "tdx_dev_root",
        "maa_issuers",
        "confidential_space_audience",
        "jwks_cache_dir",
    }
)
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
_MAX_ISSUERS = 16
_AMD_CRL_MODES = ("off", "fail-closed", "fail-open")


@dataclass(frozen=True)
class AttestationSettings:
    """Trust material for the attestation verifiers (``attestation:`` in broker.yaml).

    Every field is optional: SEV-SNP needs nothing beyond the pinned AMD ARKs (and
    ``snp_trust_dir`` / the dev chain at the top level); TDX needs ``intel_root_dir`` (or,
    with a simulated TDX, ``tdx_dev_root``); MAA needs ``maa_issuers``; Confidential Space
    needs ``confidential_space_audience``. ``extra_*_pins`` trust a private root as if it were
    the vendor's (a deployment's own PKI, or tests) and are named so that nobody sets them
    by accident. ``amd_crl`` checks SEV-SNP ASK/VCEK revocation against AMD's CRLs (fetched
    from AMD KDS): ``fail-closed`` refuses evidence when no fresh CRL can be had,
    ``fail-open`` goes on unchecked, ``off`` (the default, for offline brokers) skips it.
    """

    amd_kds_cache_dir: Path | None = None
    amd_kds_offline: bool = False
    amd_crl: str = "off"
    extra_amd_ark_pins: Mapping[str, str] = field(default_factory=dict)
    intel_root_dir: Path | None = None
    extra_intel_root_pins: tuple[str, ...] = ()
    tdx_collateral: Path | None = None
    tdx_dev_root: Path | None = None
    maa_issuers: tuple[str, ...] = ()
    confidential_space_audience: str | None = None
    jwks_cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.amd_kds_offline, bool):
            raise TrustStoreError("attestation.amd_kds_offline: expected true or false")
        if self.amd_crl not in _AMD_CRL_MODES:
            raise TrustStoreError(
                f"attestation.amd_crl: expected one of {', '.join(_AMD_CRL_MODES)}")
        for fingerprint, product in self.extra_amd_ark_pins.items():
            if not isinstance(fingerprint, str) or not _FINGERPRINT.match(fingerprint) \
                    or product not in PRODUCTS:
                raise TrustStoreError("attestation.extra_amd_ark_pins: expected SPKI SHA-256 "
                                  f"(64 lowercase hex) -> one of {', '.join(PRODUCTS)}")
        for fingerprint in self.extra_intel_root_pins:
            if not isinstance(fingerprint, str) or not _FINGERPRINT.match(fingerprint):
                raise TrustStoreError("attestation.extra_intel_root_pins: expected certificate "
                                  "SHA-256 values (64 lowercase hex)")
        if len(self.maa_issuers) > _MAX_ISSUERS or not all(
                isinstance(issuer, str) and issuer.startswith("https://") and len(issuer) <= 256
                for issuer in self.maa_issuers):
            raise TrustStoreError(f"attestation.maa_issuers: expected at most {_MAX_ISSUERS} "
                              "https:// URLs")
        audience = self.confidential_space_audience
        if audience is not None and (not isinstance(audience, str) or not 1 <= len(audience)
                                     <= 512):
            raise TrustStoreError("attestation.confidential_space_audience: expected a string")

    @classmethod
    def from_mapping(cls, document: object, *, base_dir: Path) -> AttestationSettings:
        if document is None:
            return cls()
        document = checked_section(document, "attestation", _ATTESTATION_FIELDS,
                                   TrustStoreError)

        def path(key: str) -> Path | None:
            value = document.get(key)
            if value is None:
                return None
            if not isinstance(value, str) or not value:
                raise TrustStoreError(f"attestation.{key}: expected a path or null")
            return (base_dir / value).resolve()

        def strings(key: str) -> tuple[str, ...]:
            value = document.get(key, [])
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise TrustStoreError(f"attestation.{key}: expected a list of strings")
            return tuple(value)

        pins = document.get("extra_amd_ark_pins", {})
        if not isinstance(pins, Mapping):
            raise TrustStoreError("attestation.extra_amd_ark_pins: expected a mapping")
        return cls(
            amd_kds_cache_dir=path("amd_kds_cache_dir"),
            amd_kds_offline=document.get("amd_kds_offline", False),
            amd_crl=document.get("amd_crl", "off"),
            extra_amd_ark_pins=dict(pins),
            intel_root_dir=path("intel_root_dir"),
            extra_intel_root_pins=strings("extra_intel_root_pins"),
            tdx_collateral=path("tdx_collateral"),
            tdx_dev_root=path("tdx_dev_root"),
            maa_issuers=strings("maa_issuers"),
            confidential_space_audience=document.get("confidential_space_audience"),
            jwks_cache_dir=path("jwks_cache_dir"),
        )

    def to_mapping(self, relative: Callable[[Path | None], str | None]) -> dict[str, object]:
        return {
            "amd_kds_cache_dir": relative(self.amd_kds_cache_dir),
            "amd_kds_offline": self.amd_kds_offline,
            "amd_crl": self.amd_crl,
            "extra_amd_ark_pins": dict(self.extra_amd_ark_pins),
            "intel_root_dir": relative(self.intel_root_dir),
            "extra_intel_root_pins": list(self.extra_intel_root_pins),
            "tdx_collateral": relative(self.tdx_collateral),
            "tdx_dev_root": relative(self.tdx_dev_root),
            "maa_issuers": list(self.maa_issuers),
            "confidential_space_audience": self.confidential_space_audience,
            "jwks_cache_dir": relative(self.jwks_cache_dir),
        }
