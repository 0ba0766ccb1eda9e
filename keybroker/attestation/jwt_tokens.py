"""RS256 token checks for attestation tokens (MAA, Confidential Space).

`verify_rs256_token` checks a compact JWS: RS256 only (``none``, HS* and everything else
are refused before any key is looked up), no ``crit`` header, a known ``kid``, the signature,
then ``iss`` (exact), ``aud`` (when configured), ``exp`` (required), ``nbf`` and ``iat`` with
a small leeway. Format problems raise `EvidenceFormatError`, failed checks
`EvidenceVerificationError`, each naming the check. `check_token_evidence_request` holds
the checks every token verifier makes on its inputs before the token itself.

What it does not: fetch or cache signing keys (``keybroker.attestation.jwks``), or map token
claims to `Claims` (see `maa`, `confidential_space`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from keybroker.attestation.errors import (
    EvidenceFormatError,
    EvidenceVerificationError,
    ReportDataMismatchError,
)
from keybroker.attestation.jose_encoding import B64URL, load_json_object

if TYPE_CHECKING:
    from keybroker.attestation.jwks import JwksCache

__all__ = [
    "DEFAULT_LEEWAY_SECONDS",
    "MAX_KID_LENGTH",
    "MAX_TOKEN_SIZE",
    "REPORT_DATA_SIZE",
    "check_token_evidence_request",
    "verify_rs256_token",
]

MAX_TOKEN_SIZE = 64 * 1024
MAX_KID_LENGTH = 256
DEFAULT_LEEWAY_SECONDS = 60
REPORT_DATA_SIZE = 64


def check_token_evidence_request(expected_report_data: object,
                                 endorsements: Mapping[str, bytes], evidence_kind: str) -> None:
    """Token evidence binds exactly 64 bytes of report data and carries no endorsements."""
    if not isinstance(expected_report_data, bytes) or \
            len(expected_report_data) != REPORT_DATA_SIZE:
        raise ReportDataMismatchError("expected report_data must be exactly 64 bytes")
    if endorsements:
        raise EvidenceFormatError(f"{evidence_kind} evidence takes no endorsements, got "
                                  f"{sorted(endorsements)}")


def _b64url_part(part: str, what: str) -> bytes:
    if not B64URL.match(part):
        raise EvidenceFormatError(f"token {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise EvidenceFormatError(f"token {what} is not base64url") from None


def _number(payload: Mapping[str, Any], name: str, required: bool) -> float | None:
    value = payload.get(name)
    if value is None:
        if required:
            raise EvidenceVerificationError(f"token has no {name!r} claim")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EvidenceFormatError(f"token {name!r} claim is not a number")
    return float(value)


def _check_audience(payload: Mapping[str, Any], audience: str) -> None:
    claim = payload.get("aud")
    audiences = [claim] if isinstance(claim, str) else claim
    if not isinstance(audiences, list) or audience not in audiences:
        raise EvidenceVerificationError(f"token audience {claim!r} does not include {audience!r}")


def _check_times(payload: Mapping[str, Any], now: float, leeway: float) -> None:
    expires = _number(payload, "exp", required=True)
    assert expires is not None
    if now > expires + leeway:
        raise EvidenceVerificationError("token has expired")
    not_before = _number(payload, "nbf", required=False)
    if not_before is not None and now + leeway < not_before:
        raise EvidenceVerificationError("token is not valid yet (nbf is in the future)")
    issued = _number(payload, "iat", required=False)
    if issued is not None and now + leeway < issued:
        raise EvidenceVerificationError("token was issued in the future (iat)")


def verify_rs256_token(token: bytes | str, keys: JwksCache, *, issuer: str,
                       audience: str | None, now: float,
                       leeway_seconds: float = DEFAULT_LEEWAY_SECONDS) -> dict[str, Any]:
    """The verified payload of a compact RS256 JWS, or a typed error naming the check."""
    if isinstance(token, bytes | bytearray):
        if len(token) > MAX_TOKEN_SIZE:
            raise EvidenceFormatError(f"token is {len(token)} bytes, over {MAX_TOKEN_SIZE}")
        try:
            token = bytes(token).decode("ascii")
        except UnicodeDecodeError:
            raise EvidenceFormatError("token is not ASCII") from None
    if not isinstance(token, str) or len(token) > MAX_TOKEN_SIZE:
        raise EvidenceFormatError(f"token must be a string of at most {MAX_TOKEN_SIZE} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise EvidenceFormatError(f"token has {len(parts)} parts, not 3 (compact JWS)")
    header = load_json_object(_b64url_part(parts[0], "header"), "token header",
                              EvidenceFormatError)
    algorithm = header.get("alg")
    if algorithm != "RS256":
        raise EvidenceVerificationError(f"token alg {algorithm!r} is not RS256")
    if "crit" in header:
        raise EvidenceVerificationError("token header has critical extensions (crit)")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
        raise EvidenceVerificationError("token header has no usable kid")
    signature = _b64url_part(parts[2], "signature")
    key = keys.key_for(kid)
    try:
        key.verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii"), padding.PKCS1v15(),
                   hashes.SHA256())
    except InvalidSignature:
        raise EvidenceVerificationError(
            f"token signature does not verify under key {kid!r}") from None
    payload = load_json_object(_b64url_part(parts[1], "payload"), "token payload",
                               EvidenceFormatError)
    if payload.get("iss") != issuer:
        raise EvidenceVerificationError(
            f"token issuer {payload.get('iss')!r} is not the configured {issuer!r}")
    if audience is not None:
        _check_audience(payload, audience)
    _check_times(payload, now, leeway_seconds)
    return payload
