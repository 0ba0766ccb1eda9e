"""Request and response bodies of the broker's HTTP API (pydantic models).

Every string field has a length bound, so oversized input is refused (422) before any
decoding; binary fields travel as standard base64 and are decoded, with their own byte
bounds, by the service. Unknown fields are refused. This module holds shapes only.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from keybroker.service.sessions import MAX_SESSION_TOKEN_LENGTH

__all__ = [
    "MAX_BOUND_KEY_BYTES",
    "MAX_ENDORSEMENTS",
    "MAX_ENDORSEMENT_BYTES",
    "MAX_EVIDENCE_BYTES",
    "MAX_TEE_PUBLIC_KEY_BYTES",
    "MAX_WRAPPED_DEK_BYTES",
    "AttestRequest",
    "AttestResponse",
    "ChallengeResponse",
    "ErrorResponse",
    "GenerateRequest",
    "GenerateResponse",
    "HealthResponse",
    "OutputDestination",
    "ReleaseNamedRequest",
    "ReleaseNamedResponse",
    "ReleaseRequest",
    "ReleaseResponse",
    "SignedEnvelope",
    "base64_length",
]

MAX_EVIDENCE_BYTES = 64 * 1024
MAX_ENDORSEMENTS = 8
MAX_ENDORSEMENT_BYTES = 64 * 1024
MAX_TEE_PUBLIC_KEY_BYTES = 4096
MAX_WRAPPED_DEK_BYTES = 4096
MAX_NONCE_BYTES = 64
MAX_BOUND_KEY_BYTES = 4096  # envelope.transport.MAX_BOUND_KEY_LENGTH


def base64_length(byte_count: int) -> int:
    """Characters of padded base64 for ``byte_count`` bytes."""
    return 4 * ((byte_count + 2) // 3)


def _b64(byte_count: int) -> type[str]:
    return Annotated[str, StringConstraints(min_length=1, max_length=base64_length(byte_count))]  # type: ignore[return-value]


Text16 = Annotated[str, StringConstraints(min_length=1, max_length=16)]
Text32 = Annotated[str, StringConstraints(min_length=1, max_length=32)]
Region = Annotated[str, StringConstraints(min_length=1, max_length=64)]
ProducerId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
KekUri = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
KekVersion = Annotated[str, StringConstraints(min_length=1, max_length=128)]
SessionId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_SESSION_TOKEN_LENGTH)
]  # a sealed token (sessions.py)
KeyName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
SpecFingerprint = Annotated[
    str, StringConstraints(min_length=64, max_length=64, pattern=r"^[0-9a-fA-F]{64}$")
]
KeyPurpose = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$"),
]
NonceB64 = _b64(MAX_NONCE_BYTES)
EvidenceB64 = _b64(MAX_EVIDENCE_BYTES)
EndorsementB64 = _b64(MAX_ENDORSEMENT_BYTES)
TeePublicKeyB64 = _b64(MAX_TEE_PUBLIC_KEY_BYTES)
BoundKeyB64 = _b64(MAX_BOUND_KEY_BYTES)
BoundKeyLabel = Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{1,32}$")]
MAX_BOUND_KEYS = 4
WrappedDekB64 = _b64(MAX_WRAPPED_DEK_BYTES)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnvelopeSignature(_Strict):
    keyid: Annotated[str, StringConstraints(max_length=128)]
    sig: Annotated[str, StringConstraints(max_length=256)]


class SignedEnvelope(_Strict):
    """A DSSE envelope signed by the broker's identity key (docs/PROTOCOL.md)."""

    payloadType: str
    payload: str = Field(description="base64 of the canonical JSON document")
    signatures: list[EnvelopeSignature]


_GRANT_DESCRIPTION = (
    "the broker's signed grant over (operation, request, this reply, session, time); "
    "workers verify it with the pinned broker key before using a key"
)


class ChallengeResponse(_Strict):
    nonce: str = Field(description="base64 of 32 random bytes; single use")
    expires_at: float = Field(description="Unix time (seconds) after which the nonce is refused")


class AttestRequest(_Strict):
    nonce: NonceB64
    tee: Text32 = Field(description='"sev-snp", "tdx", "azure-cvm", "maa", "confidential-space"')
    evidence: EvidenceB64
    endorsements: Annotated[dict[Text32, EndorsementB64], Field(max_length=MAX_ENDORSEMENTS)] = (
        Field(default_factory=dict, description='e.g. {"vcek": base64 DER} for sev-snp')
    )
    tee_public_key: TeePublicKeyB64
    bound_keys: Annotated[dict[BoundKeyLabel, BoundKeyB64], Field(max_length=MAX_BOUND_KEYS)] = (
        Field(default_factory=dict, description='further public keys the evidence binds beside '
              'the HPKE key (report_data_binding bound_keys), e.g. {"provenance": base64 '
              'Ed25519 key}; listed in the signed attestation result')
    )


class AttestResponse(_Strict):
    session_id: str
    expires_at: float
    simulated: bool
    claims: dict[str, object]
    attestation_result: SignedEnvelope = Field(
        description="the broker's signed attestation result (session, TEE keys, claims, rule)"
    )
    grant: SignedEnvelope = Field(description=_GRANT_DESCRIPTION)


class ReleaseRequest(_Strict):
    session_id: SessionId
    kek_uri: KekUri
    kek_version: KekVersion
    wrapped_dek: WrappedDekB64
    region: Region
    producer_id: ProducerId


class ReleaseResponse(_Strict):
    sealed_dek: str = Field(
        description='base64 of seal_to_tee(.., release_info("release", key_id))'
    )
    key_id: str
    simulated: bool
    grant: SignedEnvelope = Field(description=_GRANT_DESCRIPTION)


class OutputDestination(_Strict):
    """Where the outputs sealed under a generated key go: recorded in the ledger entry.

    The service checks the sink's scheme and the location's characters (400 otherwise)."""

    sink: Annotated[str, StringConstraints(min_length=1, max_length=1024)] = Field(
        description="URL of the region's output sink (file://, gs://, azfs:// or abfs://)")
    location: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        description='where preflight found the sink (e.g. "EU", "westeurope", "local"), or '
        '"unverified"')
    verified: bool = Field(description="whether preflight read the location from the store")


class GenerateRequest(_Strict):
    session_id: SessionId
    region: Region
    producer_id: ProducerId
    spec_fingerprint: SpecFingerprint | None = Field(
        default=None,
        description="hex of the 32-byte fingerprint of the processing spec the key is for; "
        "recorded in the audit ledger",
    )
    purpose: KeyPurpose | None = Field(
        default=None, description="what the key is for (e.g. features/v1); recorded in the ledger"
    )
    destination: OutputDestination | None = Field(
        default=None, description="the region's sink and its verified location; recorded in "
        "the ledger"
    )


class GenerateResponse(_Strict):
    sealed_dek: str = Field(
        description='base64 of seal_to_tee(.., release_info("generate", key_id))'
    )
    kek_uri: str
    kek_version: str
    wrapped_dek: str
    key_id: str
    simulated: bool
    grant: SignedEnvelope = Field(description=_GRANT_DESCRIPTION)


class ReleaseNamedRequest(_Strict):
    session_id: SessionId
    name: KeyName


class ReleaseNamedResponse(_Strict):
    sealed_key: str = Field(description='base64 of seal_to_tee(.., release_info("named", name))')
    name: str
    simulated: bool
    grant: SignedEnvelope = Field(description=_GRANT_DESCRIPTION)


class HealthResponse(_Strict):
    status: Text16
    ledger_entries: int


class ErrorResponse(_Strict):
    error: str
    reason: str
