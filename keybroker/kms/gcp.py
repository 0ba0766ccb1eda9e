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
regions (the broker's settings do), and never logs key bytes or plaintext. Names, URIs and
CRC32C live in ``keybroker.kms.gcp_names``, the error mapping in ``keybroker.kms.gcp_errors``;
the names other code imports from here are re-exported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
    KmsUnwrapError,
    checked_bytes,
)
from keybroker.kms.gcp_errors import (
    DESTROYED_STATES,
    TRANSIENT_STATUS_CODES,
    KeyDisabledError,
    KmsIntegrityError,
    typed_error,
)
from keybroker.kms.gcp_names import (
    GCP_KMS_SCHEME,
    GcpKeyName,
    KeyLocationError,
    check_location,
    checked_version,
    crc32c,
    parse_gcp_kek_uri,
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

MAX_DEK_BYTES = 1024
MAX_AAD_BYTES = 4096
# Cloud KMS symmetric ciphertexts carry a header and tag of well under 100 bytes on top of
# the plaintext; the envelope's bound on a wrapped key (4 KiB) is the bound here too.
MAX_WRAPPED_CIPHERTEXT_BYTES = MAX_WRAPPED_KEY
DEFAULT_TIMEOUT_SECONDS = 10.0


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
        dek = checked_bytes("dek", dek, 1, MAX_DEK_BYTES)
        aad = checked_bytes("aad", aad, 0, MAX_AAD_BYTES)
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
        checked_version(key, wrapped.kek.version)
        ciphertext = bytes(wrapped.ciphertext)
        if not 1 <= len(ciphertext) <= MAX_WRAPPED_CIPHERTEXT_BYTES:
            raise KmsUnwrapError()  # one answer for every ciphertext that cannot authenticate
        aad = checked_bytes("aad", aad, 0, MAX_AAD_BYTES)
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
        name = key.version_name(checked_version(key, version))
        what = f"Cloud KMS DestroyCryptoKeyVersion {name}"
        request = kms_v1.DestroyCryptoKeyVersionRequest(name=name)

        def attempt() -> None:
            destroyed = self._call(
                self._client.destroy_crypto_key_version, request, what, decrypting=False
            )
            state = kms_v1.CryptoKeyVersion.CryptoKeyVersionState(destroyed.state).name
            if state not in DESTROYED_STATES:
                raise KmsError(f"{what}: the version is {state} after the call")

        self._retrying(attempt, what)

    def disable_version(self, kek_uri: str, version: str) -> None:
        """Set ``version`` DISABLED: it stops decrypting until it is enabled again."""
        key = parse_gcp_kek_uri(kek_uri)
        name = key.version_name(checked_version(key, version))
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
            raise typed_error(error, what, decrypting=decrypting) from None

    def _retrying(self, attempt: Callable[[], Any], what: str) -> Any:
        return call_with_retry(
            attempt, backoff=self._backoff, description=what, sleep=self._sleep, rng=self._rng
        )

    def __repr__(self) -> str:
        return f"GcpKms(transport={type(self._client.transport).__name__})"


def _wrapped_key_from(key: GcpKeyName, response: Any, what: str) -> WrappedKey:
    version = _version_in_name(key, response.name, what)
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


def _version_in_name(key: GcpKeyName, name: str, what: str) -> str:
    version = key.version_in(name)
    if version is None:
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
    version = key.version_in(primary.name)
    if version is None:
        raise KeyNotFoundError(f"{what}: the key has no primary version")
    state = kms_v1.CryptoKeyVersion.CryptoKeyVersionState(primary.state).name
    if state in DESTROYED_STATES:
        raise KeyDestroyedError(f"{what}: primary version {version} is {state}")
    if state == "DISABLED":
        raise KeyDisabledError(f"{what}: primary version {version} is DISABLED")
    if state != "ENABLED":
        raise KmsError(f"{what}: primary version {version} is {state}, expected ENABLED")
    return version
