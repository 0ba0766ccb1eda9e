"""PKCS#11 backend: wraps DEKs with AES-256-GCM performed inside an HSM token.

KEK URIs look like ``pkcs11://<token-label>/<key-label>`` (labels percent-encoded where they
hold ``/``, ``%`` or non-ASCII). The KEK is an AES-256 secret key object generated in the
token by ``generate_kek`` as sensitive and non-extractable, so its bytes never leave the
HSM. Each KEK gets a random 16-byte ``CKA_ID``; its hex is the version recorded in
``WrappedKey.kek.version``, and ``unwrap`` finds the key by label *and* id, so a rotated-out
key keeps unwrapping. ``retire_kek`` clears a version's ``CKA_ENCRYPT``: ``wrap`` uses the one
key with that label that may still encrypt (the primary), and refuses when there are several.
``rotate`` generates a new version and retires the old primary. ``destroy_version``
(crypto-shredding, ``keybroker.shred``) destroys a retired version's key object with
C_DestroyObject after leaving a *tombstone* in the token (a data object, application
``sealbeam/destroyed-kek/v1``, label = key label, value = the CKA_ID), so that ``unwrap``
can say ``KeyDestroyedError`` instead of "no such version".

Mechanism: ``CKM_AES_GCM`` (C_Encrypt of the DEK bytes), 12-byte random IV, 128-bit tag. It
was chosen over ``CKM_AES_KEY_WRAP_KWP`` because GCM binds associated data and KWP cannot,
and because KWP wraps key *objects*: the DEK would have to be imported as a token object and
unwrapped into one whose value is then read back out, which needs an extractable,
non-sensitive object holding the DEK. The GCM associated data is
``u32 len || "sealbeam/pkcs11/wrap/v1" || u32 len || kek uri || u32 len || version || u32 len
|| aad``, so a wrapped key is bound to its KEK name as well as to the caller's aad. The
wrapped bytes are ``0x01 (format) || iv (12) || ciphertext || tag (16)``.

The module path comes from the constructor or ``SEALBEAM_PKCS11_MODULE``; the user PIN from
the constructor or ``SEALBEAM_PKCS11_PIN``; it is kept out of reprs, logs and messages.
One logged-in session per token is opened lazily and reused under a lock (SoftHSM is
initialised without OS locking); a session the token invalidated is dropped and the call
retried. This module does not initialise tokens or manage PINs and never exports key bytes.
KEK naming lives in ``keybroker.kms.pkcs11_names``, session handling in
``keybroker.kms.pkcs11_sessions``; the names other code imports from here are re-exported.
"""

from __future__ import annotations

import os
import re
import struct
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11

from envelope.keys import KeyReference, WrappedKey
from keybroker.kms.base import (
    KeyDestroyedError,
    KeyNotFoundError,
    KmsError,
    KmsPermissionError,
    KmsUnwrapError,
    checked_bytes,
)
from keybroker.kms.pkcs11_names import (
    PKCS11_SCHEME,
    Pkcs11KeyName,
    parse_pkcs11_kek_uri,
    pkcs11_kek_uri,
)
from keybroker.kms.pkcs11_sessions import (
    Pin,
    Pkcs11ConfigurationError,
    TokenNotFoundError,
    TokenSessions,
)
from keybroker.kms.retry import Backoff

if TYPE_CHECKING:
    import random

__all__ = [
    "MAX_AAD_BYTES",
    "MAX_DEK_BYTES",
    "MODULE_ENV",
    "PIN_ENV",
    "PKCS11_SCHEME",
    "Pkcs11ConfigurationError",
    "Pkcs11KeyName",
    "Pkcs11Kms",
    "TokenNotFoundError",
    "parse_pkcs11_kek_uri",
    "pkcs11_kek_uri",
    "wrap_associated_data",
]

MODULE_ENV = "SEALBEAM_PKCS11_MODULE"
PIN_ENV = "SEALBEAM_PKCS11_PIN"
MAX_DEK_BYTES = 1024
MAX_AAD_BYTES = 4096
KEK_BITS = 256
KEK_ID_BYTES = 16
MAX_KEK_ID_BYTES = 64
WRAP_FORMAT_VERSION = 1
IV_BYTES = 12
TAG_BYTES = 16
WRAP_AAD_LABEL = b"sealbeam/pkcs11/wrap/v1"
TOMBSTONE_APPLICATION = "sealbeam/destroyed-kek/v1"
_HEADER_BYTES = 1 + IV_BYTES
_VERSION = re.compile(rf"^(?:[0-9a-f]{{2}}){{1,{MAX_KEK_ID_BYTES}}}$")

# What C_Decrypt with CKM_AES_GCM returns for a bad tag differs by token (SoftHSM: GENERAL_ERROR).
_DECRYPT_FAILURES = (
    p11.EncryptedDataInvalid,
    p11.EncryptedDataLenRange,
    p11.GeneralError,
    p11.FunctionFailed,
    p11.DataInvalid,
)


def wrap_associated_data(kek_uri: str, version: str, aad: bytes) -> bytes:
    """The GCM associated data: label, KEK URI, version, caller aad, each u32 length-prefixed."""
    fields = (WRAP_AAD_LABEL, kek_uri.encode("utf-8"), version.encode("ascii"), bytes(aad))
    return b"".join(struct.pack(">I", len(field)) + field for field in fields)


class Pkcs11Kms:
    """Wraps and unwraps DEKs with AES-256-GCM KEKs held in PKCS#11 tokens. Thread-safe."""

    scheme = PKCS11_SCHEME

    def __init__(
        self,
        module_path: str | os.PathLike[str] | None = None,
        *,
        pin: str | None = None,
        environ: Mapping[str, str] | None = None,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        """Load the module (argument, else ``SEALBEAM_PKCS11_MODULE``) and keep the PIN
        (argument, else ``SEALBEAM_PKCS11_PIN``); no token is touched until first use."""
        env = os.environ if environ is None else environ
        path = os.fspath(module_path) if module_path is not None else env.get(MODULE_ENV, "")
        if not path:
            raise Pkcs11ConfigurationError(
                f"no PKCS#11 module: pass module_path or set {MODULE_ENV}"
            )
        if not os.path.isfile(path):
            raise Pkcs11ConfigurationError(f"PKCS#11 module {path!r} is not a file")
        pin_value = pin if pin is not None else env.get(PIN_ENV, "")
        if not pin_value:
            raise Pkcs11ConfigurationError(f"no PKCS#11 user PIN: pass pin or set {PIN_ENV}")
        checked_pin = Pin(pin_value)
        try:
            lib = pkcs11.lib(path)
        except p11.PKCS11Error as error:
            raise Pkcs11ConfigurationError(
                f"PKCS#11 module {path!r} did not load: {error}"
            ) from None
        self._module_path = path
        self._sessions = TokenSessions(
            lib,
            path,
            checked_pin,
            backoff=backoff if backoff is not None else Backoff(attempts=3),
            sleep=sleep,
            rng=rng,
        )

    # -- the KMS protocol -------------------------------------------------------------------

    def wrap(self, kek_uri: str, dek: bytes, aad: bytes) -> WrappedKey:
        """AES-GCM-encrypt ``dek`` in the token under the label's primary key, binding ``aad``."""
        name = parse_pkcs11_kek_uri(kek_uri)
        dek = checked_bytes("dek", dek, 1, MAX_DEK_BYTES)
        aad = checked_bytes("aad", aad, 0, MAX_AAD_BYTES)
        uri = name.uri

        def operation(session: Any) -> WrappedKey:
            key = _primary_key(session, name)
            version = key[Attribute.ID].hex()
            iv = os.urandom(IV_BYTES)
            sealed = key.encrypt(
                dek,
                mechanism=Mechanism.AES_GCM,
                mechanism_param=pkcs11.GCMParams(iv, wrap_associated_data(uri, version, aad)),
            )
            ciphertext = bytes([WRAP_FORMAT_VERSION]) + iv + bytes(sealed)
            return WrappedKey(KeyReference(uri, version), ciphertext)

        return self._sessions.run(name.token_label, operation, f"PKCS#11 wrap under {uri}")

    def unwrap(self, wrapped: WrappedKey, aad: bytes) -> bytes:
        """Decrypt in the token; KmsUnwrapError when the wrapped key does not authenticate."""
        name = parse_pkcs11_kek_uri(wrapped.kek.uri)
        version = wrapped.kek.version
        if not _VERSION.match(version):
            raise KeyNotFoundError(
                f"KEK {name.uri}: version {version[:40]!r} is not a hex CKA_ID of "
                f"1..{MAX_KEK_ID_BYTES} bytes"
            )
        aad = checked_bytes("aad", aad, 0, MAX_AAD_BYTES)
        ciphertext = bytes(wrapped.ciphertext)
        if not _HEADER_BYTES + 1 + TAG_BYTES <= len(ciphertext) <= (
            _HEADER_BYTES + MAX_DEK_BYTES + TAG_BYTES
        ) or ciphertext[0] != WRAP_FORMAT_VERSION:
            raise KmsUnwrapError()
        uri = name.uri
        iv, sealed = ciphertext[1:_HEADER_BYTES], ciphertext[_HEADER_BYTES:]

        def operation(session: Any) -> bytes:
            key = _versioned_key(session, name, bytes.fromhex(version))
            try:
                return bytes(
                    key.decrypt(
                        sealed,
                        mechanism=Mechanism.AES_GCM,
                        mechanism_param=pkcs11.GCMParams(
                            iv, wrap_associated_data(uri, version, aad)
                        ),
                    )
                )
            except _DECRYPT_FAILURES:
                raise KmsUnwrapError() from None

        what = f"PKCS#11 unwrap under {uri} v{version}"
        return self._sessions.run(name.token_label, operation, what)

    # -- key administration -----------------------------------------------------------------

    def generate_kek(self, token_label: str, key_label: str) -> KeyReference:
        """Generate an AES-256 KEK in the token: sensitive, non-extractable, encrypt/decrypt only.

        A second call with the same labels makes a new version; retire the old one with
        ``retire_kek`` so that ``wrap`` knows which is primary.
        """
        name = parse_pkcs11_kek_uri(pkcs11_kek_uri(token_label, key_label))

        def operation(session: Any) -> KeyReference:
            key_id = os.urandom(KEK_ID_BYTES)
            with self._sessions.admin_session(name.token_label) as admin:
                admin.generate_key(
                    KeyType.AES,
                    KEK_BITS,
                    id=key_id,
                    label=name.key_label,
                    store=True,
                    capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                    template={
                        Attribute.SENSITIVE: True,
                        Attribute.EXTRACTABLE: False,
                        Attribute.PRIVATE: True,
                        Attribute.MODIFIABLE: True,  # so that retire_kek can clear CKA_ENCRYPT
                        Attribute.WRAP: False,
                        Attribute.UNWRAP: False,
                        Attribute.SIGN: False,
                        Attribute.VERIFY: False,
                        Attribute.DERIVE: False,
                    },
                )
            return KeyReference(name.uri, key_id.hex())

        return self._sessions.run(name.token_label, operation, f"PKCS#11 generate KEK {name.uri}")

    def retire_kek(self, kek: KeyReference) -> None:
        """Stop wrapping under this KEK version (clear CKA_ENCRYPT); it still unwraps."""
        name = parse_pkcs11_kek_uri(kek.uri)
        if not _VERSION.match(kek.version):
            raise KeyNotFoundError(f"KEK {name.uri}: version {kek.version[:40]!r} is not hex")

        def operation(session: Any) -> None:
            key = _versioned_key(session, name, bytes.fromhex(kek.version))
            with self._sessions.admin_session(name.token_label) as admin:
                admin_key = _only(
                    _find_keys(admin, name.key_label, key_id=key[Attribute.ID]), name, kek.version
                )
                admin_key[Attribute.ENCRYPT] = False

        self._sessions.run(name.token_label, operation, f"PKCS#11 retire {name.uri} v{kek.version}")

    def primary_version(self, kek_uri: str) -> str:
        """The CKA_ID (hex) of the one key under the label that may still encrypt."""
        name = parse_pkcs11_kek_uri(kek_uri)

        def operation(session: Any) -> str:
            return bytes(_primary_key(session, name)[Attribute.ID]).hex()

        return self._sessions.run(name.token_label, operation, f"PKCS#11 primary of {name.uri}")

    def rotate(self, kek_uri: str) -> KeyReference:
        """Generate a new version under the same label and retire the previous primary."""
        name = parse_pkcs11_kek_uri(kek_uri)
        previous = self.primary_version(kek_uri)
        created = self.generate_kek(name.token_label, name.key_label)
        self.retire_kek(KeyReference(name.uri, previous))
        return created

    def destroy_version(self, kek_uri: str, version: str) -> None:
        """Destroy a retired version's key object for good (leaving a tombstone).

        KmsPermissionError while the version may still encrypt (retire or rotate first);
        KeyDestroyedError when it was destroyed before.
        """
        name = parse_pkcs11_kek_uri(kek_uri)
        if not _VERSION.match(version):
            raise KeyNotFoundError(f"KEK {name.uri}: version {version[:40]!r} is not hex")
        key_id = bytes.fromhex(version)

        def operation(session: Any) -> None:
            keys = _find_keys(session, name.key_label, key_id=key_id)
            if not keys and _has_tombstone(session, name, key_id):
                raise KeyDestroyedError(f"KEK {name.uri} version {version} was destroyed")
            key = _only(keys, name, version)
            if key[Attribute.ENCRYPT]:
                raise KmsPermissionError(
                    f"KEK {name.uri} version {version} may still encrypt (it is the primary); "
                    "rotate or retire it before destroying it"
                )
            with self._sessions.admin_session(name.token_label) as admin:
                if not _has_tombstone(admin, name, key_id):
                    admin.create_object({
                        Attribute.CLASS: ObjectClass.DATA,
                        Attribute.TOKEN: True,
                        Attribute.PRIVATE: True,
                        Attribute.LABEL: name.key_label,
                        Attribute.APPLICATION: TOMBSTONE_APPLICATION,
                        Attribute.VALUE: key_id,
                    })
                _only(_find_keys(admin, name.key_label, key_id=key_id), name, version).destroy()

        self._sessions.run(name.token_label, operation, f"PKCS#11 destroy {name.uri} v{version}")

    def close(self) -> None:
        """Close the cached sessions (logging the application out of their tokens)."""
        self._sessions.close()

    def __repr__(self) -> str:
        return f"Pkcs11Kms(module={self._module_path!r}, tokens={self._sessions.token_labels})"


def _find_keys(session: Any, key_label: str, **match: Any) -> list[Any]:
    template = {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.AES,
        Attribute.LABEL: key_label,
    }
    if "key_id" in match:
        template[Attribute.ID] = match["key_id"]
    if match.get("encrypt"):
        template[Attribute.ENCRYPT] = True
    found = []
    for key in session.get_objects(template):  # consume fully: the search is closed at the end
        found.append(key)
        if len(found) > 16:
            break
    return found


def _only(keys: list[Any], name: Pkcs11KeyName, version: str) -> Any:
    if not keys:
        raise KeyNotFoundError(f"KEK {name.uri} has no version {version!r} in its token")
    if len(keys) > 1:
        raise KmsError(f"KEK {name.uri}: {len(keys)} keys share version {version!r}")
    return keys[0]


def _check_kek_attributes(key: Any, name: Pkcs11KeyName) -> None:
    """Fail closed on a KEK the token would let out, or that is not AES-256."""
    if not key[Attribute.SENSITIVE] or key[Attribute.EXTRACTABLE]:
        raise KmsError(f"KEK {name.uri} is extractable or not sensitive; refusing to use it")
    if key[Attribute.VALUE_LEN] != KEK_BITS // 8:
        raise KmsError(f"KEK {name.uri} is not AES-256 ({key[Attribute.VALUE_LEN]} bytes)")


def _primary_key(session: Any, name: Pkcs11KeyName) -> Any:
    keys = _find_keys(session, name.key_label, encrypt=True)
    if not keys:
        raise KeyNotFoundError(
            f"KEK {name.uri}: no AES key labeled {name.key_label!r} may encrypt in the token"
        )
    if len(keys) > 1:
        raise KmsError(
            f"KEK {name.uri}: {len(keys)} keys labeled {name.key_label!r} may encrypt; "
            "retire all but the primary"
        )
    key = keys[0]
    _check_kek_attributes(key, name)
    key_id = bytes(key[Attribute.ID] or b"")
    if not 1 <= len(key_id) <= MAX_KEK_ID_BYTES:
        raise KmsError(f"KEK {name.uri}: CKA_ID must be 1..{MAX_KEK_ID_BYTES} bytes to version it")
    return key


def _has_tombstone(session: Any, name: Pkcs11KeyName, key_id: bytes) -> bool:
    """Whether ``destroy_version`` left a marker for this version of the KEK."""
    template = {
        Attribute.CLASS: ObjectClass.DATA,
        Attribute.LABEL: name.key_label,
        Attribute.APPLICATION: TOMBSTONE_APPLICATION,
        Attribute.VALUE: key_id,
    }
    found = False
    for _ in session.get_objects(template):  # consume fully: the search is closed at the end
        found = True
    return found


def _versioned_key(session: Any, name: Pkcs11KeyName, key_id: bytes) -> Any:
    keys = _find_keys(session, name.key_label, key_id=key_id)
    if not keys and _has_tombstone(session, name, key_id):
        raise KeyDestroyedError(f"KEK {name.uri} version {key_id.hex()} was destroyed")
    key = _only(keys, name, key_id.hex())
    _check_kek_attributes(key, name)
    if not key[Attribute.DECRYPT]:
        raise KmsPermissionError(f"KEK {name.uri} version {key_id.hex()} may not decrypt")
    return key
