"""Custody statements: an in-toto Statement v1 per output, signed inside the TEE.

What it does: ``StatementSigner`` is the TEE's per-session Ed25519 key. The key session makes
one with every attestation and binds its public key into the evidence beside the HPKE key
(``report_data_binding(..., bound_keys={"provenance": key})``), so the broker's signed
attestation result lists it under ``tee_public_keys["provenance"]``. ``output_statement``
builds the statement for one output file — subject: the file's name and SHA-256; predicate
(type ``https://sealbeam.dev/custody/v1``): the input envelope ids (and their Merkle root),
the feature spec fingerprint, region, sink and format, the KEK references of the output keys,
the counts, the TEE's verified claims, the broker's signed attestation result for the session
and its signed ledger head after the grants — and ``StatementSigner.sign`` wraps it in a DSSE
envelope (payload type ``application/vnd.in-toto+json``), the in-toto convention, so
``securesystemslib``'s ``Envelope`` and ``in_toto_attestation.v1`` read it as they are.

Encodings (docs/FORMAT.md, "Custody statements"): the DSSE ``keyid`` is the hex SHA-256 of
the raw 32-byte public key; the payload is canonical JSON (sorted keys, no whitespace); the
Merkle root is RFC 6962's tree hash over the sorted 16-byte envelope ids.

What it does not: it verifies nothing (``pipelines.custody`` does, offline) and never
exports the private key.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keybroker.identity import canonical_json, pae

__all__ = [
    "CUSTODY_PREDICATE_TYPE",
    "MAX_LISTED_INPUTS",
    "PROVENANCE_KEY_LABEL",
    "STATEMENT_PAYLOAD_TYPE",
    "STATEMENT_TYPE",
    "StatementSigner",
    "merkle_root",
    "output_statement",
    "signer_key_id",
]

PROVENANCE_KEY_LABEL = "provenance"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
STATEMENT_PAYLOAD_TYPE = "application/vnd.in-toto+json"
CUSTODY_PREDICATE_TYPE = "https://sealbeam.dev/custody/v1"
MAX_LISTED_INPUTS = 4096     # above it a statement carries only the Merkle root and the count
_LEAF, _NODE = b"\x00", b"\x01"


def signer_key_id(public_bytes: bytes) -> str:
    """The DSSE keyid of a statement key: hex SHA-256 of its raw 32 bytes."""
    return hashlib.sha256(public_bytes).hexdigest()


class StatementSigner:
    """The TEE's Ed25519 statement key for one attestation; repr shows only its key id."""

    __slots__ = ("_private", "_public")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self._public = private_key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> StatementSigner:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_bytes(self) -> bytes:
        return self._public

    @property
    def key_id(self) -> str:
        return signer_key_id(self._public)

    def sign(self, statement: Mapping[str, Any]) -> dict[str, Any]:
        """A DSSE envelope over the canonical JSON of ``statement``."""
        payload = canonical_json(dict(statement))
        signature = self._private.sign(pae(STATEMENT_PAYLOAD_TYPE, payload))
        return {
            "payloadType": STATEMENT_PAYLOAD_TYPE,
            "payload": base64.b64encode(payload).decode("ascii"),
            "signatures": [{"keyid": self.key_id,
                            "sig": base64.b64encode(signature).decode("ascii")}],
        }

    def __repr__(self) -> str:
        return f"StatementSigner(key_id={self.key_id[:16]}...)"


def merkle_root(envelope_ids_hex: Sequence[str]) -> str:
    """RFC 6962 Merkle tree hash (hex) over the sorted ids; SHA-256 of nothing when empty."""
    leaves = [hashlib.sha256(_LEAF + bytes.fromhex(i)).digest() for i in sorted(envelope_ids_hex)]
    if not leaves:
        return hashlib.sha256(b"").hexdigest()
    return _tree_hash(leaves).hex()


def _tree_hash(nodes: list[bytes]) -> bytes:
    if len(nodes) == 1:
        return nodes[0]
    split = 1 << ((len(nodes) - 1).bit_length() - 1)   # largest power of two below len
    return hashlib.sha256(_NODE + _tree_hash(nodes[:split]) + _tree_hash(nodes[split:])).digest()


def output_statement(
    *,
    file_name: str,
    payload: bytes,
    region: str,
    producer_id: str,
    output_format: str,
    source_ids: Sequence[str],
    spec_fingerprint: str,
    kek_refs: Sequence[tuple[str, str]],
    counts: Mapping[str, int],
    attestation_result: Mapping[str, Any],
    ledger_head: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The in-toto Statement v1 of one output file (unsigned; ``StatementSigner.sign`` it)."""
    ids = sorted(source_ids)
    inputs: dict[str, Any] = {"count": len(ids), "merkle_root": merkle_root(ids)}
    if len(ids) <= MAX_LISTED_INPUTS:
        inputs["envelope_ids"] = ids
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": file_name,
                     "digest": {"sha256": hashlib.sha256(payload).hexdigest()}}],
        "predicateType": CUSTODY_PREDICATE_TYPE,
        "predicate": {
            "output": {"region": region, "producer_id": producer_id, "format": output_format,
                       "sink": f"{region}/{file_name}", "bytes": len(payload)},
            "inputs": inputs,
            "spec_fingerprint": spec_fingerprint,
            "kek_refs": [{"uri": uri, "version": version}
                         for uri, version in sorted(set(kek_refs))],
            "counts": dict(counts),
            "tee": {"claims": _signed_claims(attestation_result),
                    "key_label": PROVENANCE_KEY_LABEL},
            "attestation_result": dict(attestation_result),
            "ledger_head": dict(ledger_head) if ledger_head is not None else None,
        },
    }


def _signed_claims(attestation_result: Mapping[str, Any]) -> dict[str, Any]:
    """The claims inside the broker's signed result (read, not verified: the verifier does)."""
    try:
        document = json.loads(base64.b64decode(str(attestation_result.get("payload", ""))))
    except ValueError:
        return {}
    claims = document.get("claims") if isinstance(document, dict) else None
    return dict(claims) if isinstance(claims, dict) else {}
