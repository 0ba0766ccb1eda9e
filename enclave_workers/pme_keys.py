"""PME master keys backed by the key broker: output DEKs that wrap Parquet's own keys.

What it does: a Parquet Modular Encryption (PME) file written inside the TEE has two master
keys, one for the pseudonym columns and one for every other column (and the footer). Each
master key is an output DEK that the broker generated for the file's region and producer
(``KeySession.output_key``), so it exists in plaintext only inside the TEE and, wrapped
under the region's KEK, in every place that needs it. The PME ``KmsClient`` (``pme_kms``)
gets ``wrap``/``unwrap`` callables from here:

- wrap: AES-256-GCM of Parquet's key (a KEK of double wrapping, 16/24/32 bytes) under a key
  derived from the DEK (HKDF-SHA-256, info naming the role), and the resulting blob also
  carries the broker-wrapped DEK (KEK URI, KEK version, wrapped bytes), the region and the
  producer, so an authorized reader with the KMS can unwrap without asking anyone else;
- unwrap (a reader outside the TEE, e.g. ``sealbeam open``): parse the blob, refuse another
  region or a KEK other than the region's, unwrap the DEK through the KMS with
  ``dek_wrap_aad(region, producer)``, then open the blob.

The blob layout is docs/FORMAT.md, appendix "PME master-key blobs". Every length is checked
against its bound before anything is sliced; structure problems raise ``PmeKeyFormatError``
naming the field, every cryptographic failure one ``PmeKeyAuthenticationError``.

What it does not: no broker calls (the caller passes the DEKs it got from its key session),
no file I/O, no logging; it never puts key bytes in a message.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet.encryption as pqe
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from envelope import DataKey, EnvelopeError, KeyReference, WrappedKey, dek_wrap_aad
from envelope.limits import (
    MAX_KEK_URI,
    MAX_KEK_VERSION,
    MAX_PRODUCER_ID,
    MAX_REGION,
    MAX_WRAPPED_KEY,
)

from .features.compiler import CompiledSpec
from .features.pme import column_keys_for_spec, write_encrypted_parquet
from .features.pme_kms import (
    AES_KEY_LENGTHS,
    MAX_WRAPPED_BLOB_BYTES,
    KmsClientFactory,
    ParquetEncryptionError,
    callback_kms_client_factory,
)

__all__ = [
    "BLOB_MAGIC",
    "ROLES",
    "ROLE_FEATURES",
    "ROLE_PSEUDONYMS",
    "PmeKeyAuthenticationError",
    "PmeKeyError",
    "PmeKeyFormatError",
    "PmeKeyScopeError",
    "PmeMasterKey",
    "PmeMasterKeys",
    "WrappedPmeKey",
    "keyring_unwrapper",
    "master_key_id",
    "write_pme_table",
]

ROLE_FEATURES = "features"
ROLE_PSEUDONYMS = "pseudonyms"
ROLES = (ROLE_FEATURES, ROLE_PSEUDONYMS)
_ROLE_CODES = {ROLE_FEATURES: 1, ROLE_PSEUDONYMS: 2}
_ROLE_NAMES = {code: role for role, code in _ROLE_CODES.items()}

BLOB_MAGIC = b"SBPK"
BLOB_VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
MASTER_KEY_ID_PREFIX = "sealbeam-pme"
HKDF_INFO_LABEL = b"sealbeam/pme-master-key/v1\x00"
WRAP_AAD_LABEL = b"sealbeam/pme-key-wrap/v1\x00"


class PmeKeyError(ParquetEncryptionError):
    """Base of errors about PME master keys and their wrapped blobs."""


class PmeKeyFormatError(PmeKeyError):
    """A wrapped-key blob is malformed: the message names the field."""


class PmeKeyAuthenticationError(PmeKeyError):
    """A wrapped-key blob did not authenticate (wrong DEK, altered, or another key id)."""

    def __init__(self) -> None:
        super().__init__("PME wrapped key failed authentication")


class PmeKeyScopeError(PmeKeyError):
    """A blob belongs to another region, KEK, role or master key than the caller allows."""


def master_key_id(role: str, wrapped_dek: WrappedKey) -> str:
    """The PME master key id of a (role, broker-wrapped DEK): unique per DEK and role.

    Unique ids keep pyarrow's per-id caches from ever mixing keys of two files or regions.
    """
    if role not in _ROLE_CODES:
        raise PmeKeyScopeError(f"unknown PME key role {role!r}; known: {', '.join(ROLES)}")
    return f"{MASTER_KEY_ID_PREFIX}.{role}.{wrapped_dek.key_id[:32]}"


@dataclass(frozen=True)
class PmeMasterKey:
    """One master key of a PME file: a broker output DEK and where it may be read."""

    role: str
    region: str
    producer_id: str
    data_key: DataKey
    wrapped_dek: WrappedKey

    @property
    def key_id(self) -> str:
        return master_key_id(self.role, self.wrapped_dek)


@dataclass(frozen=True)
class WrappedPmeKey:
    """A Parquet key wrapped under a master key, with the broker-wrapped DEK it needs."""

    role: str
    region: str
    producer_id: str
    wrapped_dek: WrappedKey
    nonce: bytes
    ciphertext: bytes

    @property
    def master_key_id(self) -> str:
        return master_key_id(self.role, self.wrapped_dek)

    def header_bytes(self) -> bytes:
        """Everything before the nonce (authenticated as associated data)."""
        return b"".join((
            BLOB_MAGIC, bytes((BLOB_VERSION, _ROLE_CODES[self.role])),
            _u16_text("region", self.region, MAX_REGION),
            _u16_text("producer id", self.producer_id, MAX_PRODUCER_ID),
            _u16_text("kek uri", self.wrapped_dek.kek.uri, MAX_KEK_URI),
            _u16_text("kek version", self.wrapped_dek.kek.version, MAX_KEK_VERSION),
            _u16_bytes("wrapped dek", self.wrapped_dek.ciphertext, MAX_WRAPPED_KEY),
        ))

    def to_bytes(self) -> bytes:
        return self.header_bytes() + self.nonce + self.ciphertext

    @classmethod
    def parse(cls, blob: bytes) -> WrappedPmeKey:
        """Structure only (no key): every length checked before it is used."""
        if not isinstance(blob, bytes | bytearray):
            raise PmeKeyFormatError(f"a wrapped PME key must be bytes, not {type(blob).__name__}")
        if len(blob) > MAX_WRAPPED_BLOB_BYTES:
            raise PmeKeyFormatError(f"wrapped PME key is {len(blob)} bytes, over "
                                    f"{MAX_WRAPPED_BLOB_BYTES}")
        reader = _Reader(bytes(blob))
        if reader.take("magic", 4) != BLOB_MAGIC:
            raise PmeKeyFormatError("wrapped PME key: bad magic (expected SBPK)")
        version, role_code = reader.take("version and role", 2)
        if version != BLOB_VERSION:
            raise PmeKeyFormatError(f"wrapped PME key: unsupported version {version}")
        if role_code not in _ROLE_NAMES:
            raise PmeKeyFormatError(f"wrapped PME key: unknown role code {role_code}")
        region = reader.text("region", MAX_REGION)
        producer_id = reader.text("producer id", MAX_PRODUCER_ID)
        kek_uri = reader.text("kek uri", MAX_KEK_URI)
        kek_version = reader.text("kek version", MAX_KEK_VERSION)
        wrapped = reader.prefixed("wrapped dek", MAX_WRAPPED_KEY)
        nonce = reader.take("nonce", NONCE_BYTES)
        ciphertext = reader.rest()
        if len(ciphertext) - TAG_BYTES not in AES_KEY_LENGTHS:
            raise PmeKeyFormatError(f"wrapped PME key: ciphertext is {len(ciphertext)} bytes; "
                                    f"expected an AES key (16, 24 or 32) plus a {TAG_BYTES}-byte "
                                    "tag")
        try:
            wrapped_dek = WrappedKey(KeyReference(kek_uri, kek_version), wrapped)
        except EnvelopeError as exc:
            raise PmeKeyFormatError(f"wrapped PME key: bad KEK reference "
                                    f"({type(exc).__name__})") from None
        return cls(_ROLE_NAMES[role_code], region, producer_id, wrapped_dek, nonce, ciphertext)


def _wrapping_key(data_key: DataKey, role: str) -> AESGCM:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=HKDF_INFO_LABEL + bytes((_ROLE_CODES[role],))).derive(
        data_key.secret_bytes())
    return AESGCM(derived)


def _associated_data(key_id: str, header: bytes) -> bytes:
    return WRAP_AAD_LABEL + _u16_bytes("master key id", key_id.encode("utf-8"), 1024) + header


def wrap_pme_key(master: PmeMasterKey, key_bytes: bytes) -> bytes:
    """Parquet's key under ``master``: the blob a PME file stores as its wrapped KEK."""
    if len(key_bytes) not in AES_KEY_LENGTHS:
        raise PmeKeyFormatError(f"a key to wrap is {len(key_bytes)} bytes; expected 16, 24 "
                                "or 32")
    nonce = os.urandom(NONCE_BYTES)
    unsealed = WrappedPmeKey(master.role, master.region, master.producer_id,
                             master.wrapped_dek, nonce, b"")
    header = unsealed.header_bytes()
    ciphertext = _wrapping_key(master.data_key, master.role).encrypt(
        nonce, bytes(key_bytes), _associated_data(master.key_id, header))
    return header + nonce + ciphertext


def open_pme_key(blob: WrappedPmeKey, data_key: DataKey) -> bytes:
    """Parquet's key from a parsed blob, given the DEK its wrapped_dek stands for."""
    try:
        return _wrapping_key(data_key, blob.role).decrypt(
            blob.nonce, blob.ciphertext, _associated_data(blob.master_key_id,
                                                           blob.header_bytes()))
    except InvalidTag:
        raise PmeKeyAuthenticationError() from None


def _parse_for(blob: bytes, key_id: str) -> WrappedPmeKey:
    parsed = WrappedPmeKey.parse(blob)
    if parsed.master_key_id != key_id:
        raise PmeKeyScopeError(f"the wrapped key names master key {parsed.master_key_id!r}, "
                               f"not {key_id!r}")
    return parsed


class PmeMasterKeys:
    """The master keys of one PME file (inside the TEE): wrap and unwrap by master key id."""

    def __init__(self, keys: Iterable[PmeMasterKey]) -> None:
        self._keys: dict[str, PmeMasterKey] = {}
        for key in keys:
            if key.key_id in self._keys:
                raise PmeKeyScopeError(f"master key {key.key_id!r} given twice")
            self._keys[key.key_id] = key
        dek_ids = [k.wrapped_dek.key_id for k in self._keys.values()]
        if len(set(dek_ids)) != len(dek_ids):
            raise PmeKeyScopeError("two PME roles share one output DEK; each role needs its "
                                   "own (see KeySession.output_key limits)")
        if not self._keys:
            raise PmeKeyScopeError("a PME file needs at least one master key")

    def by_role(self, role: str) -> PmeMasterKey:
        for key in self._keys.values():
            if key.role == role:
                return key
        raise PmeKeyScopeError(f"no master key for role {role!r}")

    def wrap(self, key_bytes: bytes, key_id: str) -> bytes:
        master = self._keys.get(key_id)
        if master is None:
            raise PmeKeyScopeError(f"no master key {key_id!r} in this file's keys")
        return wrap_pme_key(master, key_bytes)

    def unwrap(self, blob: bytes, key_id: str) -> bytes:
        master = self._keys.get(key_id)
        if master is None:
            raise PmeKeyScopeError(f"no master key {key_id!r} in this file's keys")
        return open_pme_key(_parse_for(blob, key_id), master.data_key)

    def kms_client_factory(self) -> KmsClientFactory:
        return callback_kms_client_factory(self.wrap, self.unwrap)


UnwrapDek = Callable[[WrappedKey, bytes], bytes]


def keyring_unwrapper(unwrap_dek: UnwrapDek, *, region: str, expected_kek_uri: str | None,
                      roles: Iterable[str] = ROLES) -> Callable[[bytes, str], bytes]:
    """A reader's ``unwrap(blob, master_key_id)`` over a KMS ``unwrap(wrapped, aad)``.

    Refuses a blob of another region, of a KEK other than ``expected_kek_uri`` (when given),
    or of a role outside ``roles`` -- before the KMS is asked anything.
    """
    allowed_roles = frozenset(roles)
    unknown = sorted(allowed_roles - set(ROLES))
    if unknown:
        raise PmeKeyScopeError(f"unknown PME key role(s): {', '.join(unknown)}")

    def unwrap(blob: bytes, key_id: str) -> bytes:
        parsed = _parse_for(blob, key_id)
        if parsed.role not in allowed_roles:
            raise PmeKeyScopeError(f"this reader may not unwrap {parsed.role} keys")
        if parsed.region != region:
            raise PmeKeyScopeError(f"the key belongs to region {parsed.region!r}; this reader "
                                   f"opens only {region!r}")
        if expected_kek_uri is not None and parsed.wrapped_dek.kek.uri != expected_kek_uri:
            raise PmeKeyScopeError(f"the key is not wrapped under the KEK of region {region!r}")
        secret = unwrap_dek(parsed.wrapped_dek, dek_wrap_aad(parsed.region, parsed.producer_id))
        return open_pme_key(parsed, DataKey(secret))

    return unwrap


def write_pme_table(table: pa.Table, compiled: CompiledSpec, keys: PmeMasterKeys) -> bytes:
    """``table`` (the spec's output) as PME Parquet bytes: pseudonym columns under the
    pseudonyms master key, every other column and the footer under the features key."""
    features = keys.by_role(ROLE_FEATURES)
    pseudonyms = keys.by_role(ROLE_PSEUDONYMS)
    column_keys = column_keys_for_spec(compiled, pseudonym_key_id=pseudonyms.key_id,
                                       features_key_id=features.key_id)
    sink = pa.BufferOutputStream()
    write_encrypted_parquet(table, sink, column_keys=column_keys, footer_key=features.key_id,
                            kms_client_factory=keys.kms_client_factory(),
                            kms_connection_config=pqe.KmsConnectionConfig())
    return sink.getvalue().to_pybytes()


def master_keys_for(output_keys: Mapping[str, tuple[DataKey, WrappedKey]], region: str,
                    producer_id: str) -> PmeMasterKeys:
    """``{role: (dek, wrapped)}`` from the key session -> the file's ``PmeMasterKeys``."""
    return PmeMasterKeys(PmeMasterKey(role, region, producer_id, dek, wrapped)
                         for role, (dek, wrapped) in output_keys.items())


# -- bounded wire helpers ------------------------------------------------------------------

def _u16_bytes(field: str, value: bytes, maximum: int) -> bytes:
    if not 1 <= len(value) <= maximum:
        raise PmeKeyFormatError(f"{field} is {len(value)} bytes; allowed 1 to {maximum}")
    return struct.pack(">H", len(value)) + value


def _u16_text(field: str, value: str, maximum: int) -> bytes:
    return _u16_bytes(field, value.encode("utf-8"), maximum)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def take(self, field: str, length: int) -> bytes:
        if length > len(self._data) - self._offset:
            raise PmeKeyFormatError(f"wrapped PME key is truncated in its {field}")
        chunk = self._data[self._offset:self._offset + length]
        self._offset += length
        return chunk

    def prefixed(self, field: str, maximum: int) -> bytes:
        (length,) = struct.unpack(">H", self.take(f"{field} length", 2))
        if not 1 <= length <= maximum:
            raise PmeKeyFormatError(f"wrapped PME key: {field} length {length}; allowed 1 to "
                                    f"{maximum}")
        return self.take(field, length)

    def text(self, field: str, maximum: int) -> str:
        raw = self.prefixed(field, maximum)
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PmeKeyFormatError(f"wrapped PME key: {field} is not UTF-8") from None
        if not value.isprintable():
            raise PmeKeyFormatError(f"wrapped PME key: {field} contains a control character")
        return value

    def rest(self) -> bytes:
        chunk = self._data[self._offset:]
        self._offset = len(self._data)
        return chunk
