"""A local Cloud KMS for tests: a real gRPC server speaking google.cloud.kms.v1 on loopback.

It implements Encrypt, Decrypt, GetCryptoKey and the key-lifecycle calls CreateCryptoKeyVersion,
UpdateCryptoKeyPrimaryVersion, DestroyCryptoKeyVersion and UpdateCryptoKeyVersion (state only)
of ``google.cloud.kms.v1.KeyManagementService``
with the real protobuf messages (proto-plus ``serialize``/``deserialize``), so the real
``google-cloud-kms`` client talks to it over an insecure channel. Keys have numbered
versions, each with its own AES-256 key; ciphertexts name their version, as Cloud KMS's do,
and are AES-GCM under it with the request's additional authenticated data bound. CRC32C
fields are checked on requests and filled in on responses, and error messages copy Cloud
KMS's wording (the client parses "current state is: X" and "checksum").

Tests prepare what the next calls do: ``fail_next`` queues a status code, ``corrupt_next``
queues a bit flip of one request or response field. Like go-sev-guest's fakes, a prepared
action that no call consumed is a test failure: ``assert_all_used`` (run by the fixtures at
teardown) raises. It does not model IAM, quotas, asymmetric keys or key import.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import deque
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.cloud.kms_v1 import types as kms_types

try:
    from google_crc32c import value as _crc32c
except ImportError:  # pragma: no cover - fall back to the backend's own implementation
    from keybroker.kms.gcp import crc32c as _crc32c

SERVICE_NAME = "google.cloud.kms.v1.KeyManagementService"
_MAGIC = b"FKMS"
_HEADER = struct.Struct(">4sI12s")  # magic, version number, nonce
State = kms_types.CryptoKeyVersion.CryptoKeyVersionState
_WRONG_KEY = "Decryption failed: verify that 'name' refers to the correct CryptoKey."

REQUEST_TARGETS = (
    "request.plaintext",
    "request.ciphertext",
    "request.additional_authenticated_data",
)
RESPONSE_TARGETS = (
    "response.name",
    "response.ciphertext",
    "response.ciphertext_crc32c",
    "response.verified_plaintext_crc32c",
    "response.verified_additional_authenticated_data_crc32c",
    "response.plaintext",
    "response.plaintext_crc32c",
)


@dataclass
class _Version:
    number: int
    material: bytes | None
    state: int = State.ENABLED


@dataclass
class _CryptoKey:
    name: str
    versions: dict[int, _Version] = field(default_factory=dict)
    primary: int = 0
    purpose: int = kms_types.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT


@dataclass(frozen=True)
class _Prepared:
    method: str | None  # None: the next call of any method
    status: grpc.StatusCode | None = None
    message: str = ""
    corrupt: str | None = None

    def describe(self) -> str:
        action = f"status {self.status.name}" if self.status else f"corrupt {self.corrupt}"
        return f"{self.method or 'any method'}: {action}"


def _flip(value: bytes) -> bytes:
    return bytes([value[0] ^ 0x01]) + value[1:] if value else b"\x00"


class FakeKeyManagementService:
    """The fake's state and handlers; ``start`` serves it on 127.0.0.1 at an ephemeral port."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, _CryptoKey] = {}
        self._prepared: deque[_Prepared] = deque()
        self._server: grpc.Server | None = None
        self.address = ""
        self.calls: list[str] = []

    # --- keys -----------------------------------------------------------------------------

    def create_key(
        self, name: str, purpose: int = kms_types.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT
    ) -> str:
        """Create CryptoKey ``name`` (a full resource name) with enabled primary version 1."""
        with self._lock:
            if name in self._keys:
                raise ValueError(f"fake KMS: key {name} exists")
            self._keys[name] = _CryptoKey(name=name, purpose=purpose)
        return self.rotate(name)

    def rotate(self, name: str) -> str:
        """Add a version and make it primary; returns its version number."""
        with self._lock:
            key = self._keys[name]
            number = max(key.versions, default=0) + 1
            key.versions[number] = _Version(number=number, material=AESGCM.generate_key(256))
            key.primary = number
            return str(number)

    def set_state(self, name: str, version: str, state: int) -> None:
        """Move a version to ENABLED, DISABLED, DESTROY_SCHEDULED or DESTROYED (drops material)."""
        with self._lock:
            entry = self._keys[name].versions[int(version)]
            entry.state = state
            if state == State.DESTROYED:
                entry.material = None

    # --- prepared actions -----------------------------------------------------------------

    def fail_next(
        self, status: grpc.StatusCode, message: str = "injected by the fake", *,
        method: str | None = None,
    ) -> None:
        """Make the next call (of ``method``, if given) fail with ``status``."""
        with self._lock:
            self._prepared.append(_Prepared(method=method, status=status, message=message))

    def corrupt_next(self, method: str, target: str) -> None:
        """Flip ``target`` (e.g. ``response.ciphertext_crc32c``) in the next ``method`` call."""
        if target not in REQUEST_TARGETS + RESPONSE_TARGETS:
            raise ValueError(f"fake KMS: unknown corruption target {target!r}")
        with self._lock:
            self._prepared.append(_Prepared(method=method, corrupt=target))

    def assert_all_used(self) -> None:
        """Fail when a prepared action was never consumed: the test did not do what it meant."""
        with self._lock:
            unused = [prepared.describe() for prepared in self._prepared]
            self._prepared.clear()
        if unused:
            raise AssertionError(f"fake Cloud KMS: prepared actions never used: {unused}")

    def _take_prepared(self, method: str) -> _Prepared | None:
        with self._lock:
            self.calls.append(method)
            if self._prepared and self._prepared[0].method in (None, method):
                return self._prepared.popleft()
            return None

    # --- server ---------------------------------------------------------------------------

    def start(self) -> str:
        """Serve on 127.0.0.1 at an ephemeral port; returns ``host:port``."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {
            "Encrypt": self._handler(
                self._encrypt, kms_types.EncryptRequest, kms_types.EncryptResponse
            ),
            "Decrypt": self._handler(
                self._decrypt, kms_types.DecryptRequest, kms_types.DecryptResponse
            ),
            "GetCryptoKey": self._handler(
                self._get_crypto_key, kms_types.GetCryptoKeyRequest, kms_types.CryptoKey
            ),
            "CreateCryptoKeyVersion": self._handler(
                self._create_crypto_key_version, kms_types.CreateCryptoKeyVersionRequest,
                kms_types.CryptoKeyVersion,
            ),
            "UpdateCryptoKeyPrimaryVersion": self._handler(
                self._update_primary_version, kms_types.UpdateCryptoKeyPrimaryVersionRequest,
                kms_types.CryptoKey,
            ),
            "DestroyCryptoKeyVersion": self._handler(
                self._destroy_crypto_key_version, kms_types.DestroyCryptoKeyVersionRequest,
                kms_types.CryptoKeyVersion,
            ),
            "UpdateCryptoKeyVersion": self._handler(
                self._update_crypto_key_version, kms_types.UpdateCryptoKeyVersionRequest,
                kms_types.CryptoKeyVersion,
            ),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        self.address = f"127.0.0.1:{port}"
        return self.address

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(timeout=5)
            self._server = None

    @staticmethod
    def _handler(behaviour, request_type, response_type) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=request_type.deserialize,
            response_serializer=response_type.serialize,
        )

    # --- methods --------------------------------------------------------------------------

    def _encrypt(self, request, context):
        prepared = self._begin("Encrypt", request, context)
        _check_crc(context, request, "plaintext")
        _check_crc(context, request, "additional_authenticated_data")
        with self._lock:
            key, version = self._resolve_for_encrypt(request.name, context)
            _require_enabled(context, key, version)
            nonce = os.urandom(12)
            header = _HEADER.pack(_MAGIC, version.number, nonce)
            sealed = AESGCM(version.material).encrypt(
                nonce, bytes(request.plaintext), _bound_aad(key.name, request)
            )
        ciphertext = header + sealed
        response = kms_types.EncryptResponse(
            name=f"{key.name}/cryptoKeyVersions/{version.number}",
            ciphertext=ciphertext,
            ciphertext_crc32c=_crc32c(ciphertext),
            verified_plaintext_crc32c="plaintext_crc32c" in request,
            verified_additional_authenticated_data_crc32c=(
                "additional_authenticated_data_crc32c" in request
            ),
            protection_level=kms_types.ProtectionLevel.SOFTWARE,
        )
        return _corrupt_response(prepared, response)

    def _decrypt(self, request, context):
        prepared = self._begin("Decrypt", request, context)
        _check_crc(context, request, "ciphertext")
        _check_crc(context, request, "additional_authenticated_data")
        ciphertext = bytes(request.ciphertext)
        with self._lock:
            key = self._key(request.name, context)
            if len(ciphertext) < _HEADER.size + 16:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, _WRONG_KEY)
            magic, number, nonce = _HEADER.unpack_from(ciphertext)
            version = key.versions.get(number)
            if magic != _MAGIC or version is None:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, _WRONG_KEY)
            _require_enabled(context, key, version)
            try:
                plaintext = AESGCM(version.material).decrypt(
                    nonce, ciphertext[_HEADER.size :], _bound_aad(key.name, request)
                )
            except InvalidTag:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, _WRONG_KEY)
            used_primary = number == key.primary
        response = kms_types.DecryptResponse(
            plaintext=plaintext,
            plaintext_crc32c=_crc32c(plaintext),
            used_primary=used_primary,
            protection_level=kms_types.ProtectionLevel.SOFTWARE,
        )
        return _corrupt_response(prepared, response)

    def _get_crypto_key(self, request, context):
        self._begin("GetCryptoKey", request, context)
        with self._lock:
            key = self._key(request.name, context)
            primary = key.versions[key.primary]
            return kms_types.CryptoKey(
                name=key.name,
                purpose=key.purpose,
                primary=kms_types.CryptoKeyVersion(
                    name=f"{key.name}/cryptoKeyVersions/{primary.number}", state=primary.state
                ),
            )

    def _create_crypto_key_version(self, request, context):
        """A new ENABLED version; like Cloud KMS, creating one does not make it primary."""
        self._begin("CreateCryptoKeyVersion", request, context)
        with self._lock:
            key = self._key(request.parent, context)
            number = max(key.versions, default=0) + 1
            key.versions[number] = _Version(number=number, material=AESGCM.generate_key(256))
            return _version_message(key, key.versions[number])

    def _update_primary_version(self, request, context):
        self._begin("UpdateCryptoKeyPrimaryVersion", request, context)
        with self._lock:
            key = self._key(request.name, context)
            version_id = request.crypto_key_version_id
            version = key.versions.get(int(version_id)) if version_id.isdigit() else None
            if version is None:
                context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"CryptoKeyVersion {key.name}/cryptoKeyVersions/{version_id} not found.",
                )
            _require_enabled(context, key, version)
            key.primary = version.number
            return kms_types.CryptoKey(
                name=key.name, purpose=key.purpose,
                primary=_version_message(key, version),
            )

    def _destroy_crypto_key_version(self, request, context):
        """ENABLED or DISABLED -> DESTROY_SCHEDULED (the material stays until the real destroy
        time, as in Cloud KMS, but is never used again); anything else is FAILED_PRECONDITION."""
        self._begin("DestroyCryptoKeyVersion", request, context)
        with self._lock:
            key, version = self._version(request.name, context)
            if version.state not in (State.ENABLED, State.DISABLED):
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{request.name} cannot be destroyed, current state is: "
                    f"{State(version.state).name}.",
                )
            version.state = State.DESTROY_SCHEDULED
            return _version_message(key, version)

    def _update_crypto_key_version(self, request, context):
        """Only ``state`` (ENABLED <-> DISABLED) may be updated, as with Cloud KMS."""
        self._begin("UpdateCryptoKeyVersion", request, context)
        if list(request.update_mask.paths) != ["state"]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "update_mask must be ['state'].")
        wanted = request.crypto_key_version.state
        with self._lock:
            key, version = self._version(request.crypto_key_version.name, context)
            if wanted not in (State.ENABLED, State.DISABLED) or version.state not in (
                State.ENABLED, State.DISABLED
            ):
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{request.crypto_key_version.name} cannot become {State(wanted).name}, "
                    f"current state is: {State(version.state).name}.",
                )
            version.state = wanted
            return _version_message(key, version)

    def _version(self, name: str, context) -> tuple[_CryptoKey, _Version]:
        key_name, _, version_text = name.partition("/cryptoKeyVersions/")
        key = self._key(key_name, context)
        version = key.versions.get(int(version_text)) if version_text.isdigit() else None
        if version is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"CryptoKeyVersion {name} not found.")
        return key, version

    def _begin(self, method: str, request, context) -> _Prepared | None:
        """Record the call, apply a prepared failure or request corruption, return the rest."""
        prepared = self._take_prepared(method)
        if prepared is None:
            return None
        if prepared.status is not None:
            context.abort(prepared.status, prepared.message)
        if prepared.corrupt in REQUEST_TARGETS:
            field_name = prepared.corrupt.split(".", 1)[1]
            setattr(request, field_name, _flip(bytes(getattr(request, field_name))))
            return None
        return prepared

    def _key(self, name: str, context) -> _CryptoKey:
        key = self._keys.get(name)
        if key is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"CryptoKey {name} not found.")
        return key

    def _resolve_for_encrypt(self, name: str, context) -> tuple[_CryptoKey, _Version]:
        key_name, _, version_text = name.partition("/cryptoKeyVersions/")
        key = self._key(key_name, context)
        number = int(version_text) if version_text.isdigit() else key.primary
        version = key.versions.get(number)
        if version is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"CryptoKeyVersion {name} not found.")
        return key, version


def _version_message(key: _CryptoKey, version: _Version):
    return kms_types.CryptoKeyVersion(
        name=f"{key.name}/cryptoKeyVersions/{version.number}", state=version.state
    )


def _bound_aad(key_name: str, request) -> bytes:
    return key_name.encode() + b"\x00" + bytes(request.additional_authenticated_data)


def _check_crc(context, request, field_name: str) -> None:
    checksum_field = f"{field_name}_crc32c"
    if checksum_field not in request:
        return
    if getattr(request, checksum_field) != _crc32c(bytes(getattr(request, field_name))):
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"The checksum in field {checksum_field} did not match the data in field "
            f"{field_name}.",
        )


def _require_enabled(context, key: _CryptoKey, version: _Version) -> None:
    if version.state != State.ENABLED:
        context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{key.name}/cryptoKeyVersions/{version.number} is not enabled, current state is: "
            f"{State(version.state).name}.",
        )


def _corrupt_response(prepared: _Prepared | None, response):
    if prepared is None or prepared.corrupt is None:
        return response
    field_name = prepared.corrupt.split(".", 1)[1]
    current = getattr(response, field_name)
    if isinstance(current, bool):
        setattr(response, field_name, not current)
    elif isinstance(current, int):
        setattr(response, field_name, current ^ 0x1)
    elif isinstance(current, str):
        setattr(response, field_name, "x" + current)
    else:
        setattr(response, field_name, _flip(bytes(current)))
    return response
