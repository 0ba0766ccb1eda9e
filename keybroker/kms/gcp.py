"""Google Cloud KMS backend: wraps DEKs with Cloud KMS Encrypt/Decrypt under a symmetric key.

KEK URIs look like ``gcp-kms://projects/P/locations/L/keyRings/R/cryptoKeys/K``. ``wrap``
encrypts the DEK under the key's primary version with ``additional_authenticated_data`` =
the caller's aad (the envelope header fields) and records the version that Cloud KMS used
(the last segment of ``EncryptResponse.name``, e.g. ``"3"``) in ``WrappedKey.kek.version``.
``unwrap`` decrypts with the same aad; Cloud KMS finds the version inside its ciphertext.

Every request and response carries CRC32C checksums (``plaintext_crc32c``,
``additional_authenticated_data_crc32c``, ``ciphertext_crc32c`` and the response's
``verified_*`` flags), as Google's data-integrity guide asks; a mismatch raises
``KmsIntegrityError``, which is transient, so the call is retried like a network error.

Retried (exponential backoff with full jitter, ``keybroker.kms.retry``): UNAVAILABLE,
DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED (quota) and INTERNAL, plus integrity mismatches.
Encrypt and Decrypt change no server state, so repeating them is safe; INTERNAL is in the
set because Cloud KMS's own published retry configuration retried it. Everything else is
permanent and typed at once: PERMISSION_DENIED / UNAUTHENTICATED -> ``KmsPermissionError``,
NOT_FOUND -> ``KeyNotFoundError``, FAILED_PRECONDITION on a DESTROYED or DESTROY_SCHEDULED
version -> ``KeyDestroyedError``, on a DISABLED version -> ``KeyDisabledError``, and
INVALID_ARGUMENT from Decrypt (wrong key, wrong aad, tampered ciphertext) -> ``KmsUnwrapError``.
The client library's own retry is switched off so that only this policy applies.

Key lifecycle (for ``keybroker.shred``): ``rotate`` creates a version (CreateCryptoKeyVersion,
not retried: a repeat would create a second one) and makes it primary
(UpdateCryptoKeyPrimaryVersion); ``destroy_version`` schedules a version's destruction
(DestroyCryptoKeyVersion: DESTROY_SCHEDULED at once, its material erased after the key's
scheduled-destruction duration; from the first moment it no longer decrypts, and ``unwrap``
raises ``KeyDestroyedError``); ``disable_version`` sets DISABLED (reversible). An HSM version
still PENDING_GENERATION cannot become primary yet: ``rotate`` then fails with the service's
FAILED_PRECONDITION and the new version is left for the operator.

``check_location`` lets the broker refuse to serve a residency region with a key ring
located elsewhere. This module does not create keys or key rings, does not pick KEKs for
regions (the broker's settings do), and never logs key bytes or plaintext.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud import kms_v1
from google.protobuf import field_mask_pb2

from envelope.keys import KeyReference, WrappedKey
from envelope.limits import MAX_WRAPPED_KEY
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
    "GCP_KMS_SCHEME",
    "MAX_AAD_BYTES",
    "MAX_DEK_BYTES",
    "MAX_WRAPPED_CIPHERTEXT_BYTES",
    "TRANSIENT_STATUS_CODES",
    "GcpKeyName",
    "GcpKms",
    "KeyDisabledError",
    "KeyLocationError",
    "KmsIntegrityError",
    "check_location",
    "crc32c",
    "parse_gcp_kek_uri",
]

GCP_KMS_SCHEME = "gcp-kms"
MAX_DEK_BYTES = 1024
MAX_AAD_BYTES = 4096
# Cloud KMS symmetric ciphertexts carry a header and tag of well under 100 bytes on top of
# the plaintext; the envelope's bound on a wrapped key (4 KiB) is the bound here too.
MAX_WRAPPED_CIPHERTEXT_BYTES = MAX_WRAPPED_KEY
DEFAULT_TIMEOUT_SECONDS = 10.0

TRANSIENT_STATUS_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
    }
)
_PERMISSION_STATUS_CODES = frozenset(
    {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}
)
_DESTROYED_STATES = frozenset({"DESTROYED", "DESTROY_SCHEDULED"})
_STATE_IN_MESSAGE = re.compile(r"current state is:?\s*([A-Z_]+)")

_PROJECT = r"[a-z0-9][a-z0-9.:-]{0,99}"  # includes domain-scoped ids (example.com:project)
_LOCATION = r"[a-z0-9][a-z0-9-]{0,62}"
_RESOURCE_ID = r"[a-zA-Z0-9_-]{1,63}"
_KEY_NAME = re.compile(
    rf"^projects/(?P<project>{_PROJECT})/locations/(?P<location>{_LOCATION})"
    rf"/keyRings/(?P<key_ring>{_RESOURCE_ID})/cryptoKeys/(?P<crypto_key>{_RESOURCE_ID})$"
)
_VERSION = re.compile(r"^[1-9][0-9]{0,18}$")


class KeyDisabledError(KmsPermissionError):
    """The Cloud KMS key version exists but is DISABLED; an operator can re-enable it."""


class KmsIntegrityError(KmsTransientError):
    """A CRC32C checksum did not match: the request or the response was corrupted in transit."""


class KeyLocationError(KmsError):
    """A KEK's location is not one the residency region it serves may use."""


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        value = byte
        for _ in range(8):
            value = (value >> 1) ^ 0x82F63B78 if value & 1 else value >> 1
        table.append(value)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def _crc32c_python(data: bytes) -> int:
    """CRC32C (Castagnoli), reflected, init and final xor 0xFFFFFFFF; for small inputs only."""
    value = 0xFFFFFFFF
    for byte in data:
        value = (value >> 8) ^ _CRC32C_TABLE[(value ^ byte) & 0xFF]
    return value ^ 0xFFFFFFFF


try:
    import google_crc32c as _google_crc32c
except ImportError:  # pragma: no cover - google-crc32c ships beside google-cloud-storage
    _google_crc32c = None


def crc32c(data: bytes) -> int:
    """The CRC32C of ``data`` as Cloud KMS expects it (google-crc32c when installed)."""
    if _google_crc32c is not None:
        return int(_google_crc32c.value(bytes(data)))
    return _crc32c_python(bytes(data))


@dataclass(frozen=True)
class GcpKeyName:
    """The parts of a Cloud KMS CryptoKey resource name."""

    project: str
    location: str
    key_ring: str
    crypto_key: str

    @property
    def resource_name(self) -> str:
        return (
            f"projects/{self.project}/locations/{self.location}"
            f"/keyRings/{self.key_ring}/cryptoKeys/{self.crypto_key}"
        )

    @property
    def uri(self) -> str:
        return f"{GCP_KMS_SCHEME}://{self.resource_name}"

    def version_name(self, version: str) -> str:
        return f"{self.resource_name}/cryptoKeyVersions/{version}"


def parse_gcp_kek_uri(uri: str) -> GcpKeyName:
    """Split a ``gcp-kms://projects/.../cryptoKeys/K`` URI; KeyNotFoundError when malformed."""
    prefix = f"{GCP_KMS_SCHEME}://"
    if not isinstance(uri, str) or len(uri) > 512 or not uri.startswith(prefix):
        raise KeyNotFoundError(
            f"KEK URI {str(uri)[:80]!r}: expected {prefix}projects/P/locations/L/keyRings/R"
            "/cryptoKeys/K"
        )
    match = _KEY_NAME.match(uri[len(prefix) :])
    if match is None:
        raise KeyNotFoundError(
            f"KEK URI {uri!r}: expected {prefix}projects/P/locations/L/keyRings/R/cryptoKeys/K "
            "(a CryptoKey, not a version)"
        )
    return GcpKeyName(**match.groupdict())


def check_location(
    kek_uri: str, region: str, region_locations: Mapping[str, Collection[str]]
) -> None:
    """Refuse a KEK whose key ring lives outside the locations allowed for ``region``.

    ``region_locations`` maps each residency region the broker serves to the Cloud KMS
    locations allowed for it, e.g. ``{"eu": {"europe-west1", "europe-west3", "eu"}}``.
    A region missing from the map allows nothing: fail closed.
    """
    location = parse_gcp_kek_uri(kek_uri).location
    allowed = region_locations.get(region)
    if not allowed:
        raise KeyLocationError(f"region {region!r}: no Cloud KMS locations are allowed for it")
    if location not in allowed:
        raise KeyLocationError(
            f"KEK {kek_uri} is in location {location!r}, which region {region!r} does not "
            f"allow (allowed: {', '.join(sorted(allowed))})"
        )


def _check_length(field: str, value: bytes, minimum: int, maximum: int) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise KmsError(f"{field}: expected bytes, got {type(value).__name__}")
    value = bytes(value)
    if not minimum <= len(value) <= maximum:
        raise KmsError(f"{field}: expected {minimum}..{maximum} bytes, got {len(value)}")
    return value


def _failed_precondition(message: str, what: str) -> KmsError:
    match = _STATE_IN_MESSAGE.search(message)
    state = match.group(1) if match else None
    if state in _DESTROYED_STATES:
        return KeyDestroyedError(f"{what}: key version is {state} ({message})")
    if state == "DISABLED":
        return KeyDisabledError(f"{what}: key version is DISABLED ({message})")
    return KmsError(f"{what}: FAILED_PRECONDITION: {message}")


def _typed_error(error: Exception, what: str, *, decrypting: bool) -> KmsError:
    """Map a google-api-core / google-auth exception to the typed KMS errors."""
    if isinstance(error, auth_exceptions.RefreshError):
        if getattr(error, "retryable", False):  # the token endpoint itself was unavailable
            return KmsTransientError(f"{what}: credential refresh failed, retryable: {error}")
        return KmsPermissionError(f"{what}: credentials could not be refreshed: {error}")
    if isinstance(error, auth_exceptions.TransportError):
        return KmsTransientError(f"{what}: credential transport failed: {error}")
    if isinstance(error, auth_exceptions.GoogleAuthError):
        return KmsPermissionError(f"{what}: credentials unusable: {error}")
    if not isinstance(error, api_exceptions.GoogleAPICallError):
        return KmsError(f"{what}: unexpected {type(error).__name__}: {error}")
    code = error.grpc_status_code
    message = str(error.message)
    name = code.name if code is not None else f"HTTP {error.code}"
    if code in TRANSIENT_STATUS_CODES:
        return KmsTransientError(f"{what}: {name}: {message}")
    if code in _PERMISSION_STATUS_CODES:
        return KmsPermissionError(f"{what}: {name}: {message}")
    if code == grpc.StatusCode.NOT_FOUND:
        return KeyNotFoundError(f"{what}: NOT_FOUND: {message}")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return _failed_precondition(message, what)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        if "checksum" in message.lower() or "crc32c" in message.lower():
            return KmsIntegrityError(f"{what}: the KMS saw a checksum mismatch: {message}")
        if decrypting:
            return KmsUnwrapError()
    return KmsError(f"{what}: {name}: {message}")


class GcpKms:
    """Wraps and unwraps DEKs through Cloud KMS. Thread-safe (the gRPC client is)."""

    scheme = GCP_KMS_SCHEME

    def __init__(
        self,
        client: kms_v1.KeyManagementServiceClient | None = None,
        *,
        endpoint: str | None = None,
        credentials: Any = None,
        backoff: Backoff | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        """``client`` wins; otherwise a client is built for ``endpoint`` (e.g. a regional
        ``cloudkms.europe-west3.rep.googleapis.com``) with ``credentials`` or the ambient ones.
        """
        if client is not None and (endpoint is not None or credentials is not None):
            raise ValueError("pass either a client or endpoint/credentials, not both")
        if timeout <= 0:
            raise ValueError(f"timeout: expected > 0 seconds, got {timeout}")
        if client is None:
            options = {"api_endpoint": endpoint} if endpoint else None
            try:
                client = kms_v1.KeyManagementServiceClient(
                    credentials=credentials, client_options=options
                )
            except auth_exceptions.GoogleAuthError as error:
                raise KmsPermissionError(
                    f"Cloud KMS client: no usable credentials: {error}"
                ) from None
        self._client = client
        self._backoff = backoff if backoff is not None else Backoff()
        self._timeout = timeout
        self._sleep = sleep
        self._rng = rng

    def wrap(self, kek_uri: str, dek: bytes, aad: bytes) -> WrappedKey:
        """Encrypt ``dek`` under the primary version of ``kek_uri`` with ``aad`` bound."""
        key = parse_gcp_kek_uri(kek_uri)
        dek = _check_length("dek", dek, 1, MAX_DEK_BYTES)
        aad = _check_length("aad", aad, 0, MAX_AAD_BYTES)
        request = kms_v1.EncryptRequest(
            name=key.resource_name,
            plaintext=dek,
            plaintext_crc32c=crc32c(dek),
            additional_authenticated_data=aad,
            additional_authenticated_data_crc32c=crc32c(aad),
        )
        what = f"Cloud KMS Encrypt {key.resource_name}"

        def attempt() -> WrappedKey:
            response = self._call(self._client.encrypt, request, what, decrypting=False)
            return _wrapped_key_from(key, response, what)

        return self._retrying(attempt, what)

    def unwrap(self, wrapped: WrappedKey, aad: bytes) -> bytes:
        """Decrypt ``wrapped`` with ``aad``; KmsUnwrapError when it does not authenticate."""
        key = parse_gcp_kek_uri(wrapped.kek.uri)
        if not _VERSION.match(wrapped.kek.version):
            raise KeyNotFoundError(
                f"KEK {key.uri}: version {wrapped.kek.version[:40]!r} is not a Cloud KMS "
                "version number"
            )
        ciphertext = bytes(wrapped.ciphertext)
        if not 1 <= len(ciphertext) <= MAX_WRAPPED_CIPHERTEXT_BYTES:
            raise KmsUnwrapError()  # one answer for every ciphertext that cannot authenticate
        aad = _check_length("aad", aad, 0, MAX_AAD_BYTES)
        request = kms_v1.DecryptRequest(
            name=key.resource_name,
            ciphertext=ciphertext,
            ciphertext_crc32c=crc32c(ciphertext),
            additional_authenticated_data=aad,
            additional_authenticated_data_crc32c=crc32c(aad),
        )
        what = f"Cloud KMS Decrypt {key.version_name(wrapped.kek.version)}"

        def attempt() -> bytes:
            response = self._call(self._client.decrypt, request, what, decrypting=True)
            return _plaintext_from(response, what)

        return self._retrying(attempt, what)

    def primary_version(self, kek_uri: str) -> str:
        """Check that ``kek_uri`` is an ENCRYPT_DECRYPT key with an ENABLED primary; return it.

        For broker start-up; needs ``cloudkms.cryptoKeys.get``, which the encrypter/decrypter
        role alone lacks (then KmsPermissionError, and the broker may skip this check).
        """
        key = parse_gcp_kek_uri(kek_uri)
        what = f"Cloud KMS GetCryptoKey {key.resource_name}"
        request = kms_v1.GetCryptoKeyRequest(name=key.resource_name)

        def attempt() -> str:
            crypto_key = self._call(self._client.get_crypto_key, request, what, decrypting=False)
            return _enabled_primary_version(key, crypto_key, what)

        return self._retrying(attempt, what)

    # -- key lifecycle (keybroker.shred) ------------------------------------------------------

    def rotate(self, kek_uri: str) -> KeyReference:
        """Create a new version of ``kek_uri`` and make it the primary; returns it."""
        key = parse_gcp_kek_uri(kek_uri)
        what = f"Cloud KMS CreateCryptoKeyVersion {key.resource_name}"
        request = kms_v1.CreateCryptoKeyVersionRequest(
            parent=key.resource_name, crypto_key_version=kms_v1.CryptoKeyVersion()
        )
        created = self._call(
            self._client.create_crypto_key_version, request, what, decrypting=False
        )
        version = _version_in_name(key, created.name, what)
        what = f"Cloud KMS UpdateCryptoKeyPrimaryVersion {key.resource_name} -> {version}"
        primary_request = kms_v1.UpdateCryptoKeyPrimaryVersionRequest(
            name=key.resource_name, crypto_key_version_id=version
        )

        def attempt() -> str:
            crypto_key = self._call(
                self._client.update_crypto_key_primary_version, primary_request, what,
                decrypting=False,
            )
            return _enabled_primary_version(key, crypto_key, what)

        primary = self._retrying(attempt, what)
        if primary != version:
            raise KmsError(f"{what}: the key's primary is {primary}, not {version}")
        return KeyReference(key.uri, version)

    def destroy_version(self, kek_uri: str, version: str) -> None:
        """Schedule ``version`` for destruction; it stops decrypting at once.

        KeyDestroyedError when it is already DESTROY_SCHEDULED or DESTROYED.
        """
        key = parse_gcp_kek_uri(kek_uri)
        name = key.version_name(_checked_version(key, version))
        what = f"Cloud KMS DestroyCryptoKeyVersion {name}"
        request = kms_v1.DestroyCryptoKeyVersionRequest(name=name)

        def attempt() -> None:
            destroyed = self._call(
                self._client.destroy_crypto_key_version, request, what, decrypting=False
            )
            state = kms_v1.CryptoKeyVersion.CryptoKeyVersionState(destroyed.state).name
            if state not in _DESTROYED_STATES:
                raise KmsError(f"{what}: the version is {state} after the call")

        self._retrying(attempt, what)

    def disable_version(self, kek_uri: str, version: str) -> None:
        """Set ``version`` DISABLED: it stops decrypting until it is enabled again."""
        key = parse_gcp_kek_uri(kek_uri)
        name = key.version_name(_checked_version(key, version))
        what = f"Cloud KMS UpdateCryptoKeyVersion {name} state=DISABLED"
        request = kms_v1.UpdateCryptoKeyVersionRequest(
            crypto_key_version=kms_v1.CryptoKeyVersion(
                name=name, state=kms_v1.CryptoKeyVersion.CryptoKeyVersionState.DISABLED
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["state"]),
        )

        def attempt() -> None:
            updated = self._call(
                self._client.update_crypto_key_version, request, what, decrypting=False
            )
            state = kms_v1.CryptoKeyVersion.CryptoKeyVersionState(updated.state).name
            if state != "DISABLED":
                raise KmsError(f"{what}: the version is {state} after the call")

        self._retrying(attempt, what)

    def _call(
        self, method: Callable[..., Any], request: Any, what: str, *, decrypting: bool
    ) -> Any:
        try:
            return method(request=request, retry=None, timeout=self._timeout)
        except (api_exceptions.GoogleAPICallError, auth_exceptions.GoogleAuthError) as error:
            raise _typed_error(error, what, decrypting=decrypting) from None

    def _retrying(self, attempt: Callable[[], Any], what: str) -> Any:
        return call_with_retry(
            attempt, backoff=self._backoff, description=what, sleep=self._sleep, rng=self._rng
        )

    def __repr__(self) -> str:
        return f"GcpKms(transport={type(self._client.transport).__name__})"


def _wrapped_key_from(key: GcpKeyName, response: Any, what: str) -> WrappedKey:
    prefix = f"{key.resource_name}/cryptoKeyVersions/"
    version = response.name[len(prefix) :] if response.name.startswith(prefix) else ""
    if not _VERSION.match(version):
        raise KmsError(f"{what}: response names {response.name[:300]!r}, not a version of this key")
    if not response.verified_plaintext_crc32c:
        raise KmsIntegrityError(f"{what}: the KMS did not verify plaintext_crc32c")
    if not response.verified_additional_authenticated_data_crc32c:
        raise KmsIntegrityError(
            f"{what}: the KMS did not verify additional_authenticated_data_crc32c"
        )
    ciphertext = bytes(response.ciphertext)
    if response.ciphertext_crc32c is None or response.ciphertext_crc32c != crc32c(ciphertext):
        raise KmsIntegrityError(f"{what}: ciphertext_crc32c does not match the ciphertext")
    if not 1 <= len(ciphertext) <= MAX_WRAPPED_CIPHERTEXT_BYTES:
        raise KmsError(
            f"{what}: ciphertext of {len(ciphertext)} bytes, expected "
            f"1..{MAX_WRAPPED_CIPHERTEXT_BYTES}"
        )
    return WrappedKey(kek=KeyReference(uri=key.uri, version=version), ciphertext=ciphertext)


def _checked_version(key: GcpKeyName, version: str) -> str:
    if not isinstance(version, str) or not _VERSION.match(version):
        raise KeyNotFoundError(
            f"KEK {key.uri}: version {str(version)[:40]!r} is not a Cloud KMS version number"
        )
    return version


def _version_in_name(key: GcpKeyName, name: str, what: str) -> str:
    prefix = f"{key.resource_name}/cryptoKeyVersions/"
    version = name[len(prefix) :] if name.startswith(prefix) else ""
    if not _VERSION.match(version):
        raise KmsError(f"{what}: response names {name[:300]!r}, not a version of this key")
    return version


def _plaintext_from(response: Any, what: str) -> bytes:
    plaintext = bytes(response.plaintext)
    if response.plaintext_crc32c is None or response.plaintext_crc32c != crc32c(plaintext):
        raise KmsIntegrityError(f"{what}: plaintext_crc32c does not match the plaintext")
    if not 1 <= len(plaintext) <= MAX_DEK_BYTES:
        raise KmsError(
            f"{what}: unwrapped key of {len(plaintext)} bytes, expected 1..{MAX_DEK_BYTES}"
        )
    return plaintext


def _enabled_primary_version(key: GcpKeyName, crypto_key: Any, what: str) -> str:
    purpose = kms_v1.CryptoKey.CryptoKeyPurpose(crypto_key.purpose)
    if purpose != kms_v1.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT:
        raise KmsError(f"{what}: purpose is {purpose.name}, expected ENCRYPT_DECRYPT")
    primary = crypto_key.primary
    prefix = f"{key.resource_name}/cryptoKeyVersions/"
    version = primary.name[len(prefix) :] if primary.name.startswith(prefix) else ""
    if not _VERSION.match(version):
        raise KeyNotFoundError(f"{what}: the key has no primary version")
    state = kms_v1.CryptoKeyVersion.CryptoKeyVersionState(primary.state).name
    if state in _DESTROYED_STATES:
        raise KeyDestroyedError(f"{what}: primary version {version} is {state}")
    if state == "DISABLED":
        raise KeyDisabledError(f"{what}: primary version {version} is DISABLED")
    if state != "ENABLED":
        raise KmsError(f"{what}: primary version {version} is {state}, expected ENABLED")
    return version
