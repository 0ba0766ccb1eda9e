"""What the broker signs for each grant, and how a worker checks it before using a key.

What it does: fixes the two signed documents of docs/PROTOCOL.md ("Authenticated grants"):

- the **grant** (DSSE payload type ``application/vnd.sealbeam.grant+json``) on every reply of
  ``attest``, ``release``, ``generate`` and ``release-named``: the operation, the SHA-256 of
  the canonical request (which holds the session id, or the nonce and TEE key for attest),
  the SHA-256 of the canonical reply without its ``grant`` (so the sealed keys, wrapped keys,
  key ids and the session id it opens), the session's public handle and the signing time;
- the **attestation result** (``application/vnd.sealbeam.attestation-result+json``) in the
  ``attest`` reply: a self-contained statement that the broker verified evidence binding
  these TEE public keys to these claims under this policy rule, valid until the session
  expires; verifiable later with only the broker's public key (issue 14's provenance
  statements embed it as it is).

``sign_grant`` and ``attestation_result_document`` are the broker's side, ``verify_grant``
and ``verify_attestation_result`` the worker's; both sides share this module so that the
encoding cannot drift. What it does not: it does not transport anything and holds no key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keybroker.identity import (
    BrokerIdentity,
    BrokerPublicKey,
    SignatureInvalidError,
    canonical_json,
)

__all__ = [
    "ATTESTATION_RESULT_PAYLOAD_TYPE",
    "ATTESTATION_RESULT_TYPE",
    "GRANT_FIELD",
    "GRANT_PAYLOAD_TYPE",
    "GRANT_TYPE",
    "AttestationResult",
    "GrantError",
    "attestation_result_document",
    "reply_digest",
    "request_digest",
    "session_handle",
    "sign_grant",
    "verify_attest_reply",
    "verify_attestation_result",
    "verify_grant",
]

GRANT_PAYLOAD_TYPE = "application/vnd.sealbeam.grant+json"
GRANT_TYPE = "sealbeam/grant/v1"
ATTESTATION_RESULT_PAYLOAD_TYPE = "application/vnd.sealbeam.attestation-result+json"
ATTESTATION_RESULT_TYPE = "sealbeam/attestation-result/v1"
GRANT_FIELD = "grant"
OPERATIONS = ("attest", "release", "generate", "release-named")
DEFAULT_MAX_CLOCK_SKEW_SECONDS = 300.0


class GrantError(Exception):
    """A reply's grant is missing, not signed by the pinned key, or does not match."""


def request_digest(request: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the canonical JSON of a request body."""
    return hashlib.sha256(canonical_json(dict(request))).hexdigest()


def reply_digest(reply: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the canonical JSON of a reply body without its ``grant`` field."""
    body = {name: value for name, value in reply.items() if name != GRANT_FIELD}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def session_handle(session_id: str) -> str:
    """The session's public handle (the ledger's ``session``): SHA-256(id) hex, 16 digits."""
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()[:16]


def sign_grant(
    identity: BrokerIdentity,
    operation: str,
    request: Mapping[str, Any],
    reply: Mapping[str, Any],
    session: str,
    issued_at: float,
) -> dict[str, Any]:
    """The broker's signed grant over one (request, reply) of ``operation``."""
    if operation not in OPERATIONS:
        raise ValueError(f"operation: expected one of {OPERATIONS}")
    return identity.sign(
        GRANT_PAYLOAD_TYPE,
        {
            "type": GRANT_TYPE,
            "operation": operation,
            "request_sha256": request_digest(request),
            "reply_sha256": reply_digest(reply),
            "session": session,
            "issued_at": round(float(issued_at), 3),
        },
    )


def verify_grant(
    public_key: BrokerPublicKey,
    operation: str,
    request: Mapping[str, Any],
    reply: Mapping[str, Any],
    session: str,
    now: float,
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW_SECONDS,
) -> None:
    """Raise GrantError unless ``reply`` carries the broker's grant for exactly this exchange."""
    try:
        document = public_key.verify(reply.get(GRANT_FIELD), GRANT_PAYLOAD_TYPE)
    except SignatureInvalidError as error:
        raise GrantError(f"{operation}: reply not authenticated ({error})") from None
    expected = {
        "type": GRANT_TYPE,
        "operation": operation,
        "request_sha256": request_digest(request),
        "reply_sha256": reply_digest(reply),
        "session": session,
    }
    for name, value in expected.items():
        signed = document.get(name)
        if not isinstance(signed, str) or not hmac.compare_digest(
            signed.encode("utf-8"), value.encode("utf-8")
        ):
            raise GrantError(f"{operation}: the broker's grant does not match the reply ({name})")
    issued_at = document.get("issued_at")
    if not isinstance(issued_at, int | float) or isinstance(issued_at, bool):
        raise GrantError(f"{operation}: the broker's grant has no time")
    if abs(now - float(issued_at)) > max_clock_skew:
        raise GrantError(
            f"{operation}: the broker's grant was signed {now - float(issued_at):.0f} s from now, "
            f"outside the {max_clock_skew:.0f} s window (a replay, or clocks apart)"
        )


# -- the signed attestation result -------------------------------------------------------------


@dataclass(frozen=True)
class AttestationResult:
    """A verified attestation result: who attested what, as the broker's key vouches."""

    session: str
    tee_public_keys: Mapping[str, bytes]
    claims: Mapping[str, Any]
    policy_rule: str
    simulated: bool
    issued_at: float
    expires_at: float
    broker_key_id: str
    document: Mapping[str, Any]


def attestation_result_document(
    *,
    broker_key_id: str,
    session: str,
    tee_public_keys: Mapping[str, bytes],
    claims: Mapping[str, Any],
    policy_rule: str,
    simulated: bool,
    nonce: bytes,
    issued_at: float,
    expires_at: float,
) -> dict[str, Any]:
    """The payload the broker signs when an attestation succeeds (``raw`` claims left out)."""
    return {
        "type": ATTESTATION_RESULT_TYPE,
        "broker_key_id": broker_key_id,
        "session": session,
        "tee_public_keys": {
            name: base64.b64encode(key).decode("ascii") for name, key in tee_public_keys.items()
        },
        "claims": {name: value for name, value in claims.items() if name != "raw"},
        "policy_rule": policy_rule,
        "simulated": simulated,
        "nonce_sha256": hashlib.sha256(nonce).hexdigest(),
        "issued_at": round(float(issued_at), 3),
        "expires_at": float(expires_at),
    }


def verify_attestation_result(
    public_key: BrokerPublicKey, envelope: object
) -> AttestationResult:
    """Check the broker's signature on an attestation result and return what it states."""
    try:
        document = public_key.verify(envelope, ATTESTATION_RESULT_PAYLOAD_TYPE)
    except SignatureInvalidError as error:
        raise GrantError(f"attestation result not authenticated ({error})") from None
    if document.get("type") != ATTESTATION_RESULT_TYPE:
        raise GrantError("attestation result: unknown type")
    keys = document.get("tee_public_keys")
    claims = document.get("claims")
    if not isinstance(keys, dict) or not isinstance(claims, dict):
        raise GrantError("attestation result: tee_public_keys and claims must be objects")
    try:
        decoded = {
            str(name): base64.b64decode(str(value).encode("ascii"), validate=True)
            for name, value in keys.items()
        }
    except (ValueError, UnicodeEncodeError):
        raise GrantError("attestation result: a TEE public key is not base64") from None
    fields = {
        "session": str,
        "policy_rule": str,
        "simulated": bool,
        "issued_at": (int, float),
        "expires_at": (int, float),
        "broker_key_id": str,
    }
    for name, kind in fields.items():
        if not isinstance(document.get(name), kind):
            raise GrantError(f"attestation result: {name} missing or of the wrong type")
    if document["broker_key_id"] != public_key.key_id:
        raise GrantError("attestation result: names another broker key")
    return AttestationResult(
        session=document["session"],
        tee_public_keys=decoded,
        claims=claims,
        policy_rule=document["policy_rule"],
        simulated=document["simulated"],
        issued_at=float(document["issued_at"]),
        expires_at=float(document["expires_at"]),
        broker_key_id=document["broker_key_id"],
        document=document,
    )


def verify_attest_reply(
    public_key: BrokerPublicKey,
    envelope: object,
    *,
    session: str,
    tee_public_key: bytes,
    nonce: bytes,
    claims: Mapping[str, Any],
    simulated: bool,
) -> AttestationResult:
    """The attest reply's signed result, checked against what the worker sent and received.

    It must name this session's handle, the TEE key and nonce the worker sent, and the same
    claims (without ``raw``) and ``simulated`` as the reply.
    """
    result = verify_attestation_result(public_key, envelope)
    bound = result.tee_public_keys.get("hpke", b"")
    reply_claims = {name: value for name, value in claims.items() if name != "raw"}
    nonce_digest = hashlib.sha256(bytes(nonce)).hexdigest()
    problems = [
        name
        for name, ok in (
            ("session", hmac.compare_digest(result.session, session)),
            ("tee key", hmac.compare_digest(bound, bytes(tee_public_key))),
            ("nonce", result.document.get("nonce_sha256") == nonce_digest),
            ("claims", canonical_json(result.claims) == canonical_json(reply_claims)),
            ("simulated", result.simulated == simulated),
        )
        if not ok
    ]
    if problems:
        raise GrantError(
            f"attest: the signed attestation result does not match ({', '.join(problems)})"
        )
    return result
