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
"""

from __future__ import annotations

import os
import re
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, unquote

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11

from envelope.keys import KeyReference, WrappedKey
from keybroker.kms.base import (
    KeyDestroyedError,
    KeyNotFoundError,
    KmsError,
    KmsPermissionError,
    KmsTransientError,
    KmsUnwrapError,
)
from keybroker.kms.retry import Backoff, call_with_retry

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

PKCS11_SCHEME = "pkcs11"
MODULE_ENV = "SEALBEAM_PKCS11_MODULE"
PIN_ENV = "SEALBEAM_PKCS11_PIN"
MAX_DEK_BYTES = 1024
MAX_AAD_BYTES = 4096
MAX_TOKEN_LABEL_BYTES = 32  # CK_TOKEN_INFO.label is 32 bytes, blank padded
MAX_KEY_LABEL_BYTES = 128
MAX_PIN_BYTES = 256
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

_PIN_ERRORS = (
    p11.PinIncorrect,
    p11.PinInvalid,
    p11.PinLenRange,
    p11.PinLocked,
    p11.PinExpired,
    p11.UserPinNotInitialized,
)
# The token dropped our session (HSM restart, module re-initialised): reopen and retry.
_STALE_SESSION_ERRORS = (
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.DeviceRemoved,
    p11.TokenNotPresent,
    p11.UserNotLoggedIn,
)
_RESOURCE_ERRORS = (p11.DeviceMemory, p11.HostMemory, p11.SessionCount)
# What C_Decrypt with CKM_AES_GCM returns for a bad tag differs by token (SoftHSM: GENERAL_ERROR).
_DECRYPT_FAILURES = (
    p11.EncryptedDataInvalid,
    p11.EncryptedDataLenRange,
    p11.GeneralError,
    p11.FunctionFailed,
    p11.DataInvalid,
)

T = TypeVar("T")


class TokenNotFoundError(KeyNotFoundError):
    """No token with the KEK URI's label is present in the PKCS#11 module."""


class Pkcs11ConfigurationError(KmsError):
    """The PKCS#11 module path or PIN is missing or unusable."""


@dataclass(frozen=True)
class Pkcs11KeyName:
    """A KEK named by token label and key label."""

    token_label: str
    key_label: str

    @property
    def uri(self) -> str:
        return pkcs11_kek_uri(self.token_label, self.key_label)


def _check_label(field: str, label: str, maximum: int) -> str:
    if not isinstance(label, str) or not label:
        raise KeyNotFoundError(f"{field}: expected a non-empty label")
    encoded = label.encode("utf-8", errors="replace")
    if len(encoded) > maximum:
        raise KeyNotFoundError(f"{field}: {len(encoded)} bytes, at most {maximum}")
    if any(ord(character) < 0x20 or ord(character) == 0x7F for character in label):
        raise KeyNotFoundError(f"{field}: control characters are not allowed")
    return label


def pkcs11_kek_uri(token_label: str, key_label: str) -> str:
    """The KEK URI for a token and key label, percent-encoding what needs it."""
    _check_label("token label", token_label, MAX_TOKEN_LABEL_BYTES)
    _check_label("key label", key_label, MAX_KEY_LABEL_BYTES)
    return f"{PKCS11_SCHEME}://{quote(token_label, safe='')}/{quote(key_label, safe='')}"


def parse_pkcs11_kek_uri(uri: str) -> Pkcs11KeyName:
    """Split ``pkcs11://<token-label>/<key-label>``; KeyNotFoundError when malformed."""
    prefix = f"{PKCS11_SCHEME}://"
    if not isinstance(uri, str) or len(uri) > 1024 or not uri.startswith(prefix):
        raise KeyNotFoundError(f"KEK URI {str(uri)[:80]!r}: expected {prefix}<token>/<key>")
    parts = uri[len(prefix) :].split("/")
    if len(parts) != 2 or not all(parts) or any(c in uri for c in "?#"):
        raise KeyNotFoundError(f"KEK URI {uri!r}: expected {prefix}<token-label>/<key-label>")
    try:
        token_label, key_label = (unquote(part, errors="strict") for part in parts)
    except UnicodeDecodeError:
        raise KeyNotFoundError(f"KEK URI {uri!r}: percent-encoding is not UTF-8") from None
    name = Pkcs11KeyName(
        token_label=_check_label("token label", token_label, MAX_TOKEN_LABEL_BYTES),
        key_label=_check_label("key label", key_label, MAX_KEY_LABEL_BYTES),
    )
    return name


def wrap_associated_data(kek_uri: str, version: str, aad: bytes) -> bytes:
    """The GCM associated data: label, KEK URI, version, caller aad, each u32 length-prefixed."""
    fields = (WRAP_AAD_LABEL, kek_uri.encode("utf-8"), version.encode("ascii"), bytes(aad))
    return b"".join(struct.pack(">I", len(field)) + field for field in fields)


def _check_bytes(field: str, value: bytes, minimum: int, maximum: int) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise KmsError(f"{field}: expected bytes, got {type(value).__name__}")
    value = bytes(value)
    if not minimum <= len(value) <= maximum:
        raise KmsError(f"{field}: expected {minimum}..{maximum} bytes, got {len(value)}")
    return value


class _Pin:
    """The user PIN; never shown by repr/str."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not value or len(value.encode("utf-8")) > MAX_PIN_BYTES:
            raise Pkcs11ConfigurationError(f"PIN: expected 1..{MAX_PIN_BYTES} bytes")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<PIN redacted>"

    __str__ = __repr__


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
        self._pin = _Pin(pin_value)
        try:
            self._lib = pkcs11.lib(path)
        except p11.PKCS11Error as error:
            raise Pkcs11ConfigurationError(
                f"PKCS#11 module {path!r} did not load: {error}"
            ) from None
        self._module_path = path
        self._lock = threading.RLock()
        self._sessions: dict[str, Any] = {}
        self._backoff = backoff if backoff is not None else Backoff(attempts=3)
        self._sleep = sleep
        self._rng = rng

    # -- the KMS protocol -------------------------------------------------------------------

    def wrap(self, kek_uri: str, dek: bytes, aad: bytes) -> WrappedKey:
        """AES-GCM-encrypt ``dek`` in the token under the label's primary key, binding ``aad``."""
        name = parse_pkcs11_kek_uri(kek_uri)
        dek = _check_bytes("dek", dek, 1, MAX_DEK_BYTES)
        aad = _check_bytes("aad", aad, 0, MAX_AAD_BYTES)
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

        return self._run(name.token_label, operation, f"PKCS#11 wrap under {uri}")

    def unwrap(self, wrapped: WrappedKey, aad: bytes) -> bytes:
        """Decrypt in the token; KmsUnwrapError when the wrapped key does not authenticate."""
        name = parse_pkcs11_kek_uri(wrapped.kek.uri)
        version = wrapped.kek.version
        if not _VERSION.match(version):
            raise KeyNotFoundError(
                f"KEK {name.uri}: version {version[:40]!r} is not a hex CKA_ID of "
                f"1..{MAX_KEK_ID_BYTES} bytes"
            )
        aad = _check_bytes("aad", aad, 0, MAX_AAD_BYTES)
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

        return self._run(name.token_label, operation, f"PKCS#11 unwrap under {uri} v{version}")

    # -- key administration -----------------------------------------------------------------

    def generate_kek(self, token_label: str, key_label: str) -> KeyReference:
        """Generate an AES-256 KEK in the token: sensitive, non-extractable, encrypt/decrypt only.

        A second call with the same labels makes a new version; retire the old one with
        ``retire_kek`` so that ``wrap`` knows which is primary.
        """
        name = parse_pkcs11_kek_uri(pkcs11_kek_uri(token_label, key_label))

        def operation(session: Any) -> KeyReference:
            key_id = os.urandom(KEK_ID_BYTES)
            with self._admin_session(name.token_label) as admin:
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

        return self._run(name.token_label, operation, f"PKCS#11 generate KEK {name.uri}")

    def retire_kek(self, kek: KeyReference) -> None:
        """Stop wrapping under this KEK version (clear CKA_ENCRYPT); it still unwraps."""
        name = parse_pkcs11_kek_uri(kek.uri)
        if not _VERSION.match(kek.version):
            raise KeyNotFoundError(f"KEK {name.uri}: version {kek.version[:40]!r} is not hex")

        def operation(session: Any) -> None:
            key = _versioned_key(session, name, bytes.fromhex(kek.version))
            with self._admin_session(name.token_label) as admin:
                admin_key = _only(
                    _find_keys(admin, name.key_label, key_id=key[Attribute.ID]), name, kek.version
                )
                admin_key[Attribute.ENCRYPT] = False

        self._run(name.token_label, operation, f"PKCS#11 retire {name.uri} v{kek.version}")

    def primary_version(self, kek_uri: str) -> str:
        """The CKA_ID (hex) of the one key under the label that may still encrypt."""
        name = parse_pkcs11_kek_uri(kek_uri)

        def operation(session: Any) -> str:
            return bytes(_primary_key(session, name)[Attribute.ID]).hex()

        return self._run(name.token_label, operation, f"PKCS#11 primary of {name.uri}")

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
            with self._admin_session(name.token_label) as admin:
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

        self._run(name.token_label, operation, f"PKCS#11 destroy {name.uri} v{version}")

    def close(self) -> None:
        """Close the cached sessions (logging the application out of their tokens)."""
        with self._lock:
            sessions, self._sessions = self._sessions, {}
            for session in sessions.values():
                try:
                    session.close()
                except p11.PKCS11Error:
                    continue  # best effort: the token may already have dropped it

    def __repr__(self) -> str:
        return f"Pkcs11Kms(module={self._module_path!r}, tokens={sorted(self._sessions)})"

    # -- sessions ---------------------------------------------------------------------------

    def _run(self, token_label: str, operation: Callable[[Any], T], what: str) -> T:
        def attempt() -> T:
            with self._lock:
                try:
                    return operation(self._session(token_label, what))
                except _STALE_SESSION_ERRORS as error:
                    self._sessions.pop(token_label, None)
                    raise KmsTransientError(
                        f"{what}: token session lost ({type(error).__name__})"
                    ) from None
                except _RESOURCE_ERRORS as error:
                    raise KmsTransientError(
                        f"{what}: token busy ({type(error).__name__})"
                    ) from None
                except _PIN_ERRORS as error:
                    raise KmsPermissionError(f"{what}: {type(error).__name__}") from None
                except p11.PKCS11Error as error:
                    raise KmsError(f"{what}: PKCS#11 {type(error).__name__}") from None

        return call_with_retry(
            attempt, backoff=self._backoff, description=what, sleep=self._sleep, rng=self._rng
        )

    def _token(self, token_label: str) -> Any:
        try:
            return self._lib.get_token(token_label=token_label)
        except p11.NoSuchToken:
            raise TokenNotFoundError(
                f"no PKCS#11 token labeled {token_label!r} in {self._module_path}"
            ) from None
        except p11.MultipleTokensReturned:
            raise KmsError(f"several PKCS#11 tokens are labeled {token_label!r}") from None

    def _session(self, token_label: str, what: str) -> Any:
        """The cached logged-in session for the token, opened on first use. Caller holds lock."""
        session = self._sessions.get(token_label)
        if session is not None:
            return session
        token = self._token(token_label)
        try:
            session = token.open(user_pin=self._pin.reveal())
        except p11.UserAlreadyLoggedIn:
            session = token.open()  # login state is per application: an earlier session stays
        except _PIN_ERRORS as error:
            raise KmsPermissionError(
                f"{what}: login to token {token_label!r} refused ({type(error).__name__})"
            ) from None
        except (p11.TokenNotPresent, p11.DeviceRemoved, *_RESOURCE_ERRORS) as error:
            raise KmsTransientError(
                f"{what}: token {token_label!r}: {type(error).__name__}"
            ) from None
        self._sessions[token_label] = session
        return session

    def _admin_session(self, token_label: str) -> Any:
        """A short read/write session; the login comes from the cached session."""
        return self._token(token_label).open(rw=True)


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
