"""Builds the attestation verifiers that the broker and ``sealbeam attest verify`` use.

What it does: `TrustMaterial` says where each verifier's trust comes from — AMD ASK/ARK
chains and extra ARK pins, the AMD KDS cache (and whether it may go online), the Intel SGX
Root CA (from a directory, or in memory) and extra root pins, TDX collateral, the dev
SEV-SNP chain, MAA issuers, the Confidential Space audience, the JWKS cache.
`verifiers_from_material` builds one verifier per TEE kind that the material configures:
``sev-snp`` always (AMD's ARKs are pinned in code), ``tdx`` when an Intel root (or, with
simulation allowed, the dev TDX root) is given, ``azure-cvm`` over whichever of those
exist, ``maa`` over the configured issuers, ``confidential-space`` when an audience is set.
`build_verifiers` does this for the broker's settings, for the TEE kinds some policy rule
accepts (and SEV-SNP, the embedded default): the dev roots are loaded only when the
policy's global ``allow_simulated`` is true (fail closed: with it false, simulated evidence
cannot even verify). One clock (epoch seconds, the broker's) drives every verifier, so
tests can verify evidence with old certificates. TEE kinds without a verifier are refused
at ``/v1/attest``. For tools that verify evidence without a relying party's nonce (the
CLI), `claimed_report_data` and `embedded_intel_root` read the evidence before it is
verified.

What it does not: verify anything itself, or decide release (the policy does).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography import x509

from keybroker.attestation.azure_cvm import (
    AzureCvmVerifier,
    HclReport,
    parse_azure_cvm_evidence,
    parse_hcl_report,
)
from keybroker.attestation.claims import KNOWN_TEES, Claims
from keybroker.attestation.confidential_space import (
    CONFIDENTIAL_SPACE_ISSUER,
    ConfidentialSpaceVerifier,
)
from keybroker.attestation.errors import (
    EvidenceFormatError,
    EvidenceVerificationError,
    TrustStoreError,
)
from keybroker.attestation.jwks import MAX_TOKEN_SIZE, Getter, JwksCache, load_json_object
from keybroker.attestation.maa import MaaVerifier
from keybroker.attestation.snp import (
    AmdKdsClient,
    KdsUnavailableError,
    SnpTrustStore,
    SnpVerifier,
    layout,
)
from keybroker.attestation.snp.crl import AmdCrlChecker
from keybroker.attestation.snp.kds import httpx_getter as kds_httpx_getter
from keybroker.attestation.snp.report import parse_report
from keybroker.attestation.snp.trust import PRODUCTION_ARK_PINS
from keybroker.attestation.tdx import (
    INTEL_SGX_ROOT_CA_SHA256,
    TdxTrustStore,
    TdxVerifier,
    parse_quote,
)
from keybroker.attestation.tdx.pck import load_pem_chain
from keybroker.attestation.tdx.trust import INTEL_ROOT_FILENAME, certificate_fingerprint
from keybroker.attestation.verifier import Verifier
from keybroker.bounded_read import read_bounded
from keybroker.config import BrokerSettings
from keybroker.policy import ReleasePolicy

__all__ = [
    "MaaIssuers",
    "TrustMaterial",
    "azure_cvm_hardware",
    "build_verifiers",
    "claimed_report_data",
    "embedded_intel_root",
    "trust_material",
    "unverified_token_payload",
    "verifiers_from_material",
]

MAX_ROOT_FILE = 64 * 1024
MAX_COLLATERAL_FILE = 1024 * 1024


@dataclass(frozen=True)
class TrustMaterial:
    """Where each verifier's trust comes from; an empty field means "not configured"."""

    snp_trust_dir: Path | None = None
    snp_extra_ark_pins: Mapping[str, str] = field(default_factory=dict)
    dev_chain_dir: Path | None = None
    kds_cache_dir: Path | None = None
    kds_offline: bool = False
    amd_crl: str = "off"
    tdx_root_dir: Path | None = None
    tdx_roots: tuple[x509.Certificate, ...] = ()
    tdx_extra_root_pins: tuple[str, ...] = ()
    tdx_collateral_file: Path | None = None
    tdx_dev_root_file: Path | None = None
    maa_issuers: tuple[str, ...] = ()
    confidential_space_audience: str | None = None
    jwks_cache_dir: Path | None = None
    fixed_jwks: bytes | None = None


def unverified_token_payload(token: bytes) -> dict[str, Any]:
    """A compact JWS's payload, NOT verified: only to pick the verifier that will verify it."""
    if not isinstance(token, bytes | bytearray) or len(token) > MAX_TOKEN_SIZE:
        raise EvidenceFormatError(f"token must be bytes, at most {MAX_TOKEN_SIZE} of them")
    parts = bytes(token).strip().split(b".")
    if len(parts) != 3:
        raise EvidenceFormatError(f"token has {len(parts)} parts, not 3 (compact JWS)")
    try:
        payload = base64.urlsafe_b64decode(parts[1] + b"=" * (-len(parts[1]) % 4))
    except (binascii.Error, ValueError):
        raise EvidenceFormatError("token payload is not base64url") from None
    return load_json_object(payload, "token payload", EvidenceFormatError)


class MaaIssuers:
    """`Verifier` for MAA tokens from any of several pinned MAA instances.

    The token's (unverified) ``iss`` picks the instance; that instance's `MaaVerifier` then
    checks the signature under its own keys and the issuer again, so a token cannot choose
    keys other than its issuer's.
    """

    tee = "maa"

    def __init__(self, verifiers: Collection[MaaVerifier]) -> None:
        if not verifiers:
            raise TrustStoreError("MaaIssuers needs at least one MAA verifier")
        self._by_issuer = {verifier.issuer: verifier for verifier in verifiers}

    def evaluate(self, evidence: bytes, expected_report_data: bytes, *,
                 endorsements: Mapping[str, bytes]) -> Claims:
        issuer = unverified_token_payload(evidence).get("iss")
        verifier = self._by_issuer.get(issuer) if isinstance(issuer, str) else None
        if verifier is None:
            raise EvidenceVerificationError(
                f"token issuer {issuer!r} is not a configured MAA instance")
        return verifier.evaluate(evidence, expected_report_data, endorsements=endorsements)


# --- reading evidence before it is verified (tools without a relying party's nonce) -----
def claimed_report_data(tee: str, evidence: bytes) -> bytes:
    """The report_data the evidence itself carries (unverified; used when none is given)."""
    if tee == "sev-snp":
        return parse_report(evidence[: layout.REPORT_SIZE]).report_data
    if tee == "tdx":
        return parse_quote(evidence).body.report_data
    if tee == "azure-cvm":
        user_data = _hcl_report(evidence).runtime_data.user_data
        if user_data is None:
            raise EvidenceFormatError("HCL runtime data has no user-data; the report_data "
                                      "must be given")
        return user_data
    if tee == "maa":
        return _maa_user_data(evidence)
    raise EvidenceFormatError(f"{tee} evidence binds only a hash of its report_data; "
                              "the report_data must be given")


def _hcl_report(evidence: bytes) -> HclReport:
    return parse_hcl_report(parse_azure_cvm_evidence(evidence).hcl_report)


def azure_cvm_hardware(evidence: bytes) -> str:
    """"sev-snp" or "tdx": the hardware report inside Azure CVM evidence (unverified)."""
    return _hcl_report(evidence).hardware


def _maa_user_data(token: bytes) -> bytes:
    document = unverified_token_payload(token)
    tee_claims = document.get("x-ms-isolation-tee", document)
    runtime = tee_claims.get("x-ms-runtime") if isinstance(tee_claims, dict) else None
    runtime = runtime if isinstance(runtime, dict) else document.get("x-ms-runtime")
    user_data = runtime.get("user-data") if isinstance(runtime, dict) else None
    if not isinstance(user_data, str) or len(user_data) != 128:
        raise EvidenceFormatError("MAA x-ms-runtime user-data is not 64 bytes of hex")
    try:
        return bytes.fromhex(user_data)
    except ValueError:
        raise EvidenceFormatError("MAA x-ms-runtime user-data is not hex") from None


def embedded_intel_root(tee: str, evidence: bytes, *, required: bool = True
                        ) -> tuple[x509.Certificate, ...]:
    """The root inside a TDX quote's PCK chain when it is the pinned Intel SGX Root CA.

    Trusting it is the same as reading the root from a file: its DER must match the pin.
    """
    quote: bytes | None = evidence
    if tee == "azure-cvm":
        quote = parse_azure_cvm_evidence(evidence).td_quote
        if quote is None:
            return ()
    chain = load_pem_chain(parse_quote(quote).certification.pck_chain_pem, "PCK chain")
    roots = tuple(cert for cert in chain if cert.subject == cert.issuer
                  and certificate_fingerprint(cert) == INTEL_SGX_ROOT_CA_SHA256)
    if not roots and required:
        raise EvidenceVerificationError(
            "the quote's PCK chain does not end at the pinned Intel SGX Root CA "
            "(name another trust anchor explicitly)")
    return roots


# --- building ---------------------------------------------------------------------------
def _datetime_clock(clock: Callable[[], float]) -> Callable[[], datetime]:
    return lambda: datetime.fromtimestamp(clock(), timezone.utc)


def _offline_kds_getter(url: str, _timeout: float) -> bytes:
    raise KdsUnavailableError(f"AMD KDS is offline by configuration (not fetching {url})")


def _snp_verifier(material: TrustMaterial, clock: Callable[[], float],
                  kds_getter: Callable[[str, float], bytes] | None) -> SnpVerifier:
    trust = SnpTrustStore(
        material.snp_trust_dir,
        allow_simulated=material.dev_chain_dir is not None,
        dev_chain_dir=material.dev_chain_dir,
        ark_pins={**PRODUCTION_ARK_PINS, **material.snp_extra_ark_pins},
    )
    kds = None
    if material.kds_cache_dir is not None:
        getter = _offline_kds_getter if material.kds_offline else (kds_getter or kds_httpx_getter)
        kds = AmdKdsClient(getter, cache_dir=material.kds_cache_dir)
    revocation = None
    if material.amd_crl != "off":
        crl_getter = _offline_kds_getter if material.kds_offline else (
            kds_getter or kds_httpx_getter)
        revocation = AmdCrlChecker(crl_getter, mode=material.amd_crl)
    return SnpVerifier(trust, clock=_datetime_clock(clock), kds=kds, revocation=revocation)


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    return read_bounded(path, limit, TrustStoreError, cannot_read=f"cannot read {what} {path}",
                        too_large=f"{what} {path} is over its {limit}-byte limit")


def _intel_roots(material: TrustMaterial) -> list[x509.Certificate]:
    roots = list(material.tdx_roots)
    if material.tdx_root_dir is not None:
        path = Path(material.tdx_root_dir) / INTEL_ROOT_FILENAME
        pem = _read_bounded(path, MAX_ROOT_FILE, "Intel root")
        try:
            roots.extend(x509.load_pem_x509_certificates(pem))
        except ValueError:
            raise TrustStoreError(f"{path} holds no valid PEM certificate") from None
    return roots


def _tdx_dev_roots(material: TrustMaterial) -> list[x509.Certificate]:
    if material.tdx_dev_root_file is None:
        return []
    pem = _read_bounded(material.tdx_dev_root_file, MAX_ROOT_FILE, "TDX dev root")
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TrustStoreError(f"{material.tdx_dev_root_file} holds no valid PEM "
                              "certificate") from None


def _tdx_verifier(material: TrustMaterial, clock: Callable[[], float]) -> TdxVerifier | None:
    roots, dev_roots = _intel_roots(material), _tdx_dev_roots(material)
    if not roots and not dev_roots:
        return None
    trust = TdxTrustStore(
        roots, dev_roots=dev_roots,
        pinned_fingerprints=(INTEL_SGX_ROOT_CA_SHA256, *material.tdx_extra_root_pins))
    collateral = None
    if material.tdx_collateral_file is not None:
        collateral = _read_bounded(material.tdx_collateral_file, MAX_COLLATERAL_FILE,
                                   "TDX collateral")
    return TdxVerifier(trust, clock=_datetime_clock(clock), collateral=collateral)


def _jwks_options(material: TrustMaterial, issuer: str,
                  getter: Getter | None) -> dict[str, Any]:
    """Keyword arguments for a token verifier: fixed keys, or fetched (and cached) ones."""
    if material.fixed_jwks is not None:
        document = material.fixed_jwks
        return {"keys": JwksCache(jwks_uri=f"fixed-jwks:{issuer}",
                                  getter=lambda _url: document)}
    options: dict[str, Any] = {"getter": getter}
    if material.jwks_cache_dir is not None:
        name = hashlib.sha256(issuer.encode("utf-8")).hexdigest()[:32]
        options["cache_file"] = Path(material.jwks_cache_dir) / f"jwks-{name}.json"
    return options


def verifiers_from_material(
    material: TrustMaterial,
    *,
    clock: Callable[[], float] = time.time,
    tees: Collection[str] = KNOWN_TEES,
    jwks_getter: Getter | None = None,
    kds_getter: Callable[[str, float], bytes] | None = None,
    hardware: str | None = None,
) -> dict[str, Verifier]:
    """TEE kind -> verifier for every kind in ``tees`` that ``material`` configures.

    ``hardware`` ("sev-snp" / "tdx") limits Azure CVM to one hardware kind, so that a caller
    holding one piece of evidence builds only the trust store it needs.
    """
    verifiers: dict[str, Verifier] = {}
    azure = "azure-cvm" in tees
    snp = tdx = None
    if "sev-snp" in tees or (azure and hardware in (None, "sev-snp")):
        snp = _snp_verifier(material, clock, kds_getter)
    if "tdx" in tees or (azure and hardware in (None, "tdx")):
        tdx = _tdx_verifier(material, clock)
    if "sev-snp" in tees and snp is not None:
        verifiers["sev-snp"] = snp
    if "tdx" in tees and tdx is not None:
        verifiers["tdx"] = tdx
    if azure and (snp is not None or tdx is not None):
        verifiers["azure-cvm"] = AzureCvmVerifier(snp=snp, tdx=tdx)
    if "maa" in tees and material.maa_issuers:
        verifiers["maa"] = MaaIssuers([
            MaaVerifier(issuer, clock=clock, **_jwks_options(material, issuer, jwks_getter))
            for issuer in material.maa_issuers])
    audience = material.confidential_space_audience
    if "confidential-space" in tees and audience:
        verifiers["confidential-space"] = ConfidentialSpaceVerifier(
            audience, clock=clock,
            **_jwks_options(material, CONFIDENTIAL_SPACE_ISSUER, jwks_getter))
    return verifiers


def trust_material(settings: BrokerSettings, policy: ReleasePolicy) -> TrustMaterial:
    """The broker's trust material: its settings, with the dev root only if the policy allows."""
    attestation = settings.attestation
    return TrustMaterial(
        snp_trust_dir=settings.snp_trust_dir,
        snp_extra_ark_pins=dict(attestation.extra_amd_ark_pins),
        dev_chain_dir=settings.dev_chain_dir if policy.allow_simulated else None,
        kds_cache_dir=attestation.amd_kds_cache_dir,
        kds_offline=attestation.amd_kds_offline,
        amd_crl=attestation.amd_crl,
        tdx_root_dir=attestation.intel_root_dir,
        tdx_extra_root_pins=tuple(attestation.extra_intel_root_pins),
        tdx_collateral_file=attestation.tdx_collateral,
        tdx_dev_root_file=attestation.tdx_dev_root if policy.allow_simulated else None,
        maa_issuers=tuple(attestation.maa_issuers),
        confidential_space_audience=attestation.confidential_space_audience,
        jwks_cache_dir=attestation.jwks_cache_dir,
    )


def build_verifiers(
    settings: BrokerSettings,
    policy: ReleasePolicy,
    *,
    clock: Callable[[], float] = time.time,
    jwks_getter: Getter | None = None,
    kds_getter: Callable[[str, float], bytes] | None = None,
) -> dict[str, Verifier]:
    """TEE kind -> verifier, for every TEE the settings configure and some rule accepts.

    SEV-SNP is always built (the embedded default); a kind no rule accepts could never be
    given a key, so it gets no verifier and its evidence is refused before any parsing.
    """
    return verifiers_from_material(trust_material(settings, policy), clock=clock,
                                   tees=policy.tees | {"sev-snp"}, jwks_getter=jwks_getter,
                                   kds_getter=kds_getter)
