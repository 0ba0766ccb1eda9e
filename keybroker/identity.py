"""The broker's identity key: signs grants, attestation results and ledger checkpoints.

What it does: ``BrokerIdentity`` holds the broker's Ed25519 private key (created by
``sealbeam keys init`` as ``broker-identity.pem`` beside the keyring, mode 0600, with its
public half in ``broker-identity.pub.pem``) and signs documents as DSSE envelopes
(``{"payloadType", "payload", "signatures": [{"keyid", "sig"}]}``, the signature over the
DSSE v1 pre-authentication encoding), the convention in-toto attestations use, so a signed
attestation result can later be embedded in a provenance statement as it is.
``BrokerPublicKey`` is what workers and auditors pin: it verifies such an envelope and
returns its payload, or raises ``SignatureInvalidError`` with no detail beyond which check
failed.

What it does not: it decides nothing about what a payload must say (``keybroker.grants``
and ``keybroker.checkpoints`` do) and it never exports the private key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keybroker.bounded_read import read_bounded

__all__ = [
    "IDENTITY_KEY_FILE",
    "IDENTITY_PUBLIC_KEY_FILE",
    "BrokerIdentity",
    "BrokerPublicKey",
    "IdentityError",
    "SignatureInvalidError",
    "canonical_json",
    "pae",
    "public_key_file_name",
]

IDENTITY_KEY_FILE = "broker-identity.pem"
IDENTITY_PUBLIC_KEY_FILE = "broker-identity.pub.pem"
MAX_PEM_BYTES = 16 * 1024
MAX_PAYLOAD_BYTES = 256 * 1024


class IdentityError(Exception):
    """The identity key cannot be created, read or parsed; the message names the file."""


class SignatureInvalidError(Exception):
    """A signed document is malformed, signed by another key, or its signature is wrong."""


# Built once: ``json.dumps`` with options builds an encoder on every call (a grant hashes
# and signs three documents per release).
_CANONICAL_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)


def canonical_json(document: Any) -> bytes:
    """The one byte string of a JSON document that is hashed and signed.

    Keys sorted, no whitespace, ASCII only, no NaN: the same document always gives the
    same bytes (Python floats round-trip through ``repr``, so a parsed reply re-encodes to
    what was signed).
    """
    try:
        return _CANONICAL_ENCODER.encode(document).encode("ascii")
    except (TypeError, ValueError) as error:
        raise SignatureInvalidError(f"document is not plain JSON ({error})") from None


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding of (payload type, payload)."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


def _key_id(public_key: Ed25519PublicKey) -> str:
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


class BrokerPublicKey:
    """A pinned broker public key (Ed25519): verifies DSSE envelopes the broker signed."""

    def __init__(self, public_key: Ed25519PublicKey) -> None:
        if not isinstance(public_key, Ed25519PublicKey):
            raise IdentityError("broker identity: expected an Ed25519 public key")
        self._key = public_key
        self._key_id = _key_id(public_key)

    @classmethod
    def from_pem(cls, pem: bytes | str) -> BrokerPublicKey:
        data = pem.encode("ascii") if isinstance(pem, str) else bytes(pem)
        if len(data) > MAX_PEM_BYTES:
            raise IdentityError("broker identity: PEM over the size limit")
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnicodeEncodeError):
            raise IdentityError("broker identity: not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise IdentityError("broker identity: expected an Ed25519 public key")
        return cls(key)

    @classmethod
    def load(cls, path: Path) -> BrokerPublicKey:
        """Read a public key PEM (or the public half of a private key PEM)."""
        data = _read_pem(Path(path))
        if b"PRIVATE KEY" in data:
            return BrokerIdentity.from_pem(data).public_key
        return cls.from_pem(data)

    @property
    def key_id(self) -> str:
        """Hex SHA-256 of the key's SubjectPublicKeyInfo DER."""
        return self._key_id

    def pem(self) -> bytes:
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verify(self, envelope: object, payload_type: str) -> dict[str, Any]:
        """The JSON payload of ``envelope`` once its signature by this key holds."""
        if not isinstance(envelope, Mapping):
            raise SignatureInvalidError("signed document: expected an object")
        if envelope.get("payloadType") != payload_type:
            raise SignatureInvalidError(f"signed document: payloadType is not {payload_type}")
        payload = _b64_field(envelope.get("payload"), "payload", MAX_PAYLOAD_BYTES)
        signatures = envelope.get("signatures")
        if not isinstance(signatures, list) or not 1 <= len(signatures) <= 4:
            raise SignatureInvalidError("signed document: expected 1 to 4 signatures")
        message = pae(payload_type, payload)
        for entry in signatures:
            if not isinstance(entry, Mapping):
                raise SignatureInvalidError("signed document: a signature is not an object")
            keyid = entry.get("keyid")
            if not isinstance(keyid, str) or not hmac.compare_digest(
                keyid.encode("ascii", "replace"), self._key_id.encode("ascii")
            ):
                continue
            signature = _b64_field(entry.get("sig"), "sig", 128)
            try:
                self._key.verify(signature, message)
            except InvalidSignature:
                raise SignatureInvalidError("signed document: bad signature") from None
            try:
                document = json.loads(payload)
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise SignatureInvalidError("signed document: payload is not JSON") from None
            if not isinstance(document, dict):
                raise SignatureInvalidError("signed document: payload is not a JSON object")
            return document
        raise SignatureInvalidError("signed document: not signed by the pinned broker key")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BrokerPublicKey) and other.key_id == self._key_id

    def __hash__(self) -> int:
        return hash(self._key_id)

    def __repr__(self) -> str:
        return f"BrokerPublicKey(key_id={self._key_id[:16]}...)"


class BrokerIdentity:
    """The broker's private identity key. Signs; never logged, never exported."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise IdentityError("broker identity: expected an Ed25519 private key")
        self._private = private_key
        self._public = BrokerPublicKey(private_key.public_key())

    @classmethod
    def generate(cls) -> BrokerIdentity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> BrokerIdentity:
        try:
            key = serialization.load_pem_private_key(bytes(pem), password=None)
        except (ValueError, TypeError):
            raise IdentityError("broker identity: not an unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError("broker identity: expected an Ed25519 private key")
        return cls(key)

    @classmethod
    def load(cls, path: Path) -> BrokerIdentity:
        return cls.from_pem(_read_pem(Path(path)))

    @classmethod
    def create(cls, path: Path, *, overwrite: bool = False) -> BrokerIdentity:
        """A new key written to ``path`` (0600) and its public half beside it."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise IdentityError(f"broker identity {path.name} exists; refusing to overwrite it")
        identity = cls.generate()
        pem = identity._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
            descriptor = os.open(path, flags, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(pem)
            os.chmod(path, 0o600)
            public_path = path.with_name(public_key_file_name(path))
            public_path.write_bytes(identity.public_key.pem())
        except OSError as error:
            raise IdentityError(
                f"cannot write broker identity {path.name}: {error.strerror}"
            ) from None
        return identity

    @property
    def public_key(self) -> BrokerPublicKey:
        return self._public

    @property
    def key_id(self) -> str:
        return self._public.key_id

    def sign(self, payload_type: str, document: Mapping[str, Any]) -> dict[str, Any]:
        """A DSSE envelope over the canonical JSON of ``document``."""
        payload = canonical_json(dict(document))
        signature = self._private.sign(pae(payload_type, payload))
        return {
            "payloadType": payload_type,
            "payload": base64.b64encode(payload).decode("ascii"),
            "signatures": [
                {"keyid": self.key_id, "sig": base64.b64encode(signature).decode("ascii")}
            ],
        }

    def __repr__(self) -> str:
        return f"BrokerIdentity(key_id={self.key_id[:16]}...)"


def public_key_file_name(private_path: Path) -> str:
    """``broker-identity.pem`` -> ``broker-identity.pub.pem``."""
    name = Path(private_path).name
    stem = name[: -len(".pem")] if name.endswith(".pem") else name
    return f"{stem}.pub.pem"


def _read_pem(path: Path) -> bytes:
    return read_bounded(path, MAX_PEM_BYTES, IdentityError,
                        cannot_read=f"cannot read broker identity {path.name}",
                        too_large=f"broker identity {path.name} is over {MAX_PEM_BYTES} bytes")


def _b64_field(value: object, name: str, maximum: int) -> bytes:
    if not isinstance(value, str) or len(value) > 4 * ((maximum + 2) // 3):
        raise SignatureInvalidError(f"signed document: {name} missing or too long")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise SignatureInvalidError(f"signed document: {name} is not base64") from None
