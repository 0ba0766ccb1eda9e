"""Azure Key Vault / Managed HSM backend for the key broker, plus the Secure Key Release call.

What it does:
- `AzureKeyVaultKms` wraps and unwraps DEKs under a Key Vault or Managed HSM key named by
  ``azure-kv://VAULT.vault.azure.net/keys/NAME[/VERSION]`` (or ``NAME.managedhsm.azure.net``),
  through the real ``azure-keyvault-keys`` SDK and an injected ``azure-identity`` credential.
  RSA keys use RSA-OAEP-256 (``CryptographyClient.wrap_key`` / ``unwrap_key``); symmetric
  ``oct-HSM`` keys of a Managed HSM use AES key wrap (``A256KW``, RFC 3394).
- `release_key_to_tee` asks the vault to release an exportable key to a TEE
  (``KeyClient.release_key`` with the worker's MAA token as the target). The vault answers with a
  signed JWS in which the key is wrapped to the worker's runtime key; the worker opens it with
  `enclave_workers.skr`. This module never sees the released key.

- Key lifecycle for `keybroker.shred`: `primary_version` (GET key: the current version),
  `rotate` (``KeyClient.rotate_key``, POST ``/keys/{name}/rotate``: a new version of the same type
  and size becomes current, older versions still unwrap), `disable_version` / `enable_version`
  (PATCH the version's ``attributes.enabled``), `destroy_version` and `destroy_key`.
  Key Vault cannot erase one version of a key. `destroy_version` therefore only *disables* the
  version (``erases_destroyed_versions = False``): its unwraps fail with KeyDisabledError, but the
  material stays in the vault and anyone with keys/update can enable it again, so this is not
  crypto-shredding in the strict sense. `destroy_key` is: it deletes the whole key
  (``begin_delete_key``, waiting on the SDK's poller until the soft delete completes) and purges
  it (``purge_deleted_key``), after which nothing wrapped under any of its versions opens. A
  purged key is a 404 like a key that never existed; this backend answers KeyDestroyedError for
  keys it purged itself or was told about (``purged_keys``), KeyNotFoundError otherwise.

What it does not do: create keys, set release or rotation policies (see
`keybroker.kms.skr_policy` for the release policy document), verify MAA tokens (the vault does),
recover deleted keys, or cache unwrapped DEKs.

AAD binding. Neither RSA-OAEP nor AES-KW takes associated data, so the DEK is bound to its AAD
by wrapping ``SHA-256(AAD_LABEL || aad) || dek`` and, on unwrap, comparing the first 32 bytes of
what the vault returns with the digest of the caller's AAD in constant time. Both wraps are
non-malleable (OAEP is IND-CCA2, AES-KW carries an integrity check), so nobody can move a wrapped
DEK to another AAD without the vault. Caveat of the RSA case: anyone who holds the public key can
wrap a DEK of their own choosing for any AAD; use an ``oct-HSM`` key where the producer of
wrapped DEKs must itself be authorised by the vault.

Wire format of ``WrappedKey.ciphertext`` (documented here, stable):
``0x01 (format) || alg (0x01 RSA-OAEP-256, 0x02 A256KW) || ciphertext returned by the vault``.
``WrappedKey.kek.uri`` is the key URI without a version; ``kek.version`` is the version the
vault used (the current one when the URI names none).

Failures become the typed errors of `keybroker.kms.base`: 401/403 -> KmsPermissionError,
404 -> KeyNotFoundError, a disabled or expired key -> KeyDisabledError (a KmsPermissionError, as
in `keybroker.kms.gcp`), a wrapped key that does not authenticate (wrong AAD, tampered, or the
vault's 400 on unwrap) -> KmsUnwrapError, 408/429/5xx and network faults -> retried with
`keybroker.kms.retry` backoff, then KmsTransientError.

Known hazard avoided on purpose: azure-keyvault-keys 4.11 wraps *locally with a random key*
when a ``CryptographyClient`` holds an ``oct-HSM`` key whose material it cannot see (the GET
returns no ``k``). ``oct-HSM`` wrap/unwrap therefore go to the vault through the SDK pipeline
with ``KeyClient.send_request`` (same authentication, TLS and transport).

Layout: this module holds the wrap/unwrap backend. Key URIs are parsed in
``keybroker.kms.azure_kv_names``, errors translated (and vault calls retried) in
``keybroker.kms.azure_kv_errors``, the key lifecycle lives in ``keybroker.kms.azure_kv_lifecycle``
and Secure Key Release in ``keybroker.kms.azure_kv_release``; the names other code imports from
here are re-exported.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.rest import HttpRequest
from azure.keyvault.keys import KeyClient, KeyVaultKey
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

from envelope.keys import KeyReference, WrappedKey
from keybroker.kms.azure_kv_errors import (
    KeyDisabledError,
    KeyReleaseDeniedError,
    KmsInputError,
    call_vault,
    translate_azure_error,
)
from keybroker.kms.azure_kv_lifecycle import AzureKeyLifecycle
from keybroker.kms.azure_kv_names import (
    AZURE_VAULT_DOMAINS,
    KEY_VERSION_PATTERN,
    SCHEME,
    AzureKeyUri,
)
from keybroker.kms.azure_kv_release import release_key_to_tee
from keybroker.kms.base import (
    KeyNotFoundError,
    KmsError,
    KmsPermissionError,
    KmsUnwrapError,
)
from keybroker.kms.retry import Backoff

__all__ = [
    "AAD_LABEL",
    "AZURE_VAULT_DOMAINS",
    "AzureKeyUri",
    "AzureKeyVaultKms",
    "KeyDisabledError",
    "KeyReleaseDeniedError",
    "KmsInputError",
    "release_key_to_tee",
    "translate_azure_error",
]

AAD_LABEL = b"sealbeam/azure-kv/dek-aad/v1\x00"

_FORMAT_V1 = 0x01
_ALG_RSA_OAEP_256 = 0x01
_ALG_A256KW = 0x02
_ALG_NAMES = {_ALG_RSA_OAEP_256: "RSA-OAEP-256", _ALG_A256KW: "A256KW"}
_RSA_KEY_TYPES = frozenset({"RSA", "RSA-HSM"})
_OCT_KEY_TYPES = frozenset({"oct", "oct-HSM"})

_MAX_AAD_BYTES = 64 * 1024
_MIN_DEK_BYTES, _MAX_DEK_BYTES = 16, 64
_MAX_VAULT_CIPHERTEXT = 512  # RSA-4096 output; AES-KW of 96 bytes is 104
_MAX_RESPONSE_BYTES = 64 * 1024
_DIGEST_BYTES = 32
_CLIENT_CACHE_SIZE = 128


def _aad_digest(aad: bytes) -> bytes:
    return hashlib.sha256(AAD_LABEL + aad).digest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str, field: str) -> bytes:
    if not isinstance(text, str) or len(text) > 2 * _MAX_RESPONSE_BYTES:
        raise KmsError(f"vault response field {field!r} is not a bounded string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise KmsError(f"vault response field {field!r} is not base64url") from exc


def _check_request(dek: bytes, aad: bytes) -> None:
    if not isinstance(dek, (bytes, bytearray)) or not _MIN_DEK_BYTES <= len(dek) <= _MAX_DEK_BYTES:
        raise KmsInputError(f"dek must be {_MIN_DEK_BYTES}-{_MAX_DEK_BYTES} bytes")
    if len(dek) % 8:
        raise KmsInputError("dek length must be a multiple of 8 bytes (AES key wrap)")
    _check_aad(aad)


def _check_aad(aad: bytes) -> None:
    if not isinstance(aad, (bytes, bytearray)) or len(aad) > _MAX_AAD_BYTES:
        raise KmsInputError(f"aad must be bytes of at most {_MAX_AAD_BYTES} bytes")


def _split_wrapped(ciphertext: bytes) -> tuple[int, bytes]:
    if not isinstance(ciphertext, (bytes, bytearray)):
        raise KmsInputError("wrapped key ciphertext must be bytes")
    if len(ciphertext) < 2 + 16 or len(ciphertext) > 2 + _MAX_VAULT_CIPHERTEXT:
        raise KmsInputError(
            f"wrapped key ciphertext length {len(ciphertext)} is outside "
            f"18..{2 + _MAX_VAULT_CIPHERTEXT}"
        )
    if ciphertext[0] != _FORMAT_V1:
        raise KmsInputError(f"wrapped key format byte {ciphertext[0]} is not {_FORMAT_V1}")
    if ciphertext[1] not in _ALG_NAMES:
        raise KmsInputError(f"wrapped key algorithm byte {ciphertext[1]} is unknown")
    return ciphertext[1], bytes(ciphertext[2:])


class AzureKeyVaultKms(AzureKeyLifecycle):
    """KeyManagementService over Azure Key Vault and Managed HSM (scheme ``azure-kv``).

    Each `wrap` reads the key once (current version, type, enabled state); each `unwrap` calls the
    vault. Permissions needed: keys/get, keys/wrapKey, keys/unwrapKey. The key lifecycle methods
    (rotate, disable, destroy) come from `keybroker.kms.azure_kv_lifecycle.AzureKeyLifecycle`.
    """

    scheme = SCHEME

    def __init__(
        self,
        credential: TokenCredential,
        *,
        connection_verify: bool | str = True,
        allowed_hosts: Iterable[str] = (),
        verify_challenge_resource: bool = True,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        connection_timeout: float = 10.0,
        read_timeout: float = 30.0,
        purged_keys: Iterable[str] = (),
        delete_polling_interval: float = 2.0,
        delete_timeout: float = 120.0,
    ) -> None:
        """``connection_verify``: True (system CAs) or a CA bundle path; never False.
        ``allowed_hosts``: exact ``host[:port]`` values accepted besides the Azure vault domains
        (private endpoints, tests). ``verify_challenge_resource=False`` only with such hosts.
        ``purged_keys``: key URIs known to have been deleted and purged (whole-key shreds done
        elsewhere), so their 404 reads KeyDestroyedError. ``delete_polling_interval`` /
        ``delete_timeout``: how `destroy_key` waits on the SDK's soft-delete poller."""
        if not 0 <= delete_polling_interval <= 60 or not 0 < delete_timeout <= 3600:
            raise KmsInputError(
                "delete_polling_interval must be 0-60 s and delete_timeout 0-3600 s"
            )
        if connection_verify is False or not isinstance(connection_verify, (bool, str)):
            raise KmsInputError("connection_verify must be True or a CA bundle path; TLS stays on")
        if not hasattr(credential, "get_token"):
            raise KmsInputError(
                "credential must implement get_token (an azure-identity credential)"
            )
        self._credential = credential
        self._allowed_hosts = frozenset(host.lower() for host in allowed_hosts)
        self._backoff = backoff or Backoff()
        self._sleep = sleep
        self._clock = clock
        self._client_options: dict[str, Any] = {
            "connection_verify": connection_verify,
            "verify_challenge_resource": verify_challenge_resource,
            "retry_total": 0,  # retries are ours (_call_vault), counted once
            "connection_timeout": connection_timeout,
            "read_timeout": read_timeout,
        }
        self._lock = threading.Lock()
        self._key_clients: OrderedDict[str, KeyClient] = OrderedDict()
        self._crypto_clients: OrderedDict[str, CryptographyClient] = OrderedDict()
        self._delete_polling_interval = delete_polling_interval
        self._delete_timeout = delete_timeout
        self._purged_keys = {
            AzureKeyUri.parse(uri, self._allowed_hosts).unversioned_uri for uri in purged_keys
        }

    # -- KeyManagementService -------------------------------------------------------------

    def wrap(self, kek_uri: str, dek: bytes, aad: bytes) -> WrappedKey:
        """Wrap ``dek`` under the key's named (or current) version, bound to ``aad``."""
        key_uri = AzureKeyUri.parse(kek_uri, self._allowed_hosts)
        _check_request(dek, aad)
        describe = f"azure-kv wrap with {key_uri.unversioned_uri}"
        try:
            key = call_vault(
                lambda: self._key_client(key_uri).get_key(key_uri.name, key_uri.version),
                describe + " (get key)",
                self._backoff,
                self._sleep,
            )
        except KeyNotFoundError as error:
            raise self._not_found_or_destroyed(key_uri, error) from error
        version = self._usable_version(key, key_uri, "wrapKey")
        payload = _aad_digest(aad) + bytes(dek)
        key_type = str(getattr(key.key_type, "value", key.key_type))
        if key_type in _RSA_KEY_TYPES:
            alg = _ALG_RSA_OAEP_256
            client = CryptographyClient(key, self._credential, **self._client_options)
            wrapped = call_vault(
                lambda: client.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, payload).encrypted_key,
                describe,
                self._backoff,
                self._sleep,
            )
        elif key_type in _OCT_KEY_TYPES:
            alg = _ALG_A256KW
            wrapped = self._vault_key_operation(key_uri, version, "wrapkey", payload, describe)
        else:
            raise KmsError(
                f"{describe}: key type {key_type!r} cannot wrap keys (need RSA or oct-HSM)"
            )
        if not wrapped or len(wrapped) > _MAX_VAULT_CIPHERTEXT:
            raise KmsError(f"{describe}: vault returned a wrapped key of unexpected length")
        return WrappedKey(
            kek=KeyReference(uri=key_uri.unversioned_uri, version=version),
            ciphertext=bytes([_FORMAT_V1, alg]) + bytes(wrapped),
        )

    def unwrap(self, wrapped: WrappedKey, aad: bytes) -> bytes:
        """Unwrap with the version recorded in ``wrapped``; checks the AAD binding."""
        key_uri = AzureKeyUri.parse(wrapped.kek.uri, self._allowed_hosts)
        version = wrapped.kek.version
        if not isinstance(version, str) or not KEY_VERSION_PATTERN.match(version):
            raise KmsInputError(f"wrapped key version {version!r} must be 1-64 letters or digits")
        if key_uri.version is not None and key_uri.version != version:
            raise KmsInputError(
                f"wrapped key URI names version {key_uri.version!r} but records {version!r}"
            )
        _check_aad(aad)
        alg, vault_ciphertext = _split_wrapped(wrapped.ciphertext)
        describe = f"azure-kv unwrap with {key_uri.unversioned_uri} version {version}"
        try:
            if alg == _ALG_RSA_OAEP_256:
                client = self._crypto_client(key_uri, version)
                payload = call_vault(
                    lambda: client.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, vault_ciphertext).key,
                    describe,
                    self._backoff,
                    self._sleep,
                    unwrapping=True,
                )
            else:
                payload = self._vault_key_operation(
                    key_uri, version, "unwrapkey", vault_ciphertext, describe
                )
        except KeyNotFoundError as error:
            raise self._not_found_or_destroyed(key_uri, error) from error
        if len(payload) < _DIGEST_BYTES + _MIN_DEK_BYTES:
            raise KmsUnwrapError()
        if not hmac.compare_digest(payload[:_DIGEST_BYTES], _aad_digest(aad)):
            raise KmsUnwrapError()
        return bytes(payload[_DIGEST_BYTES:])

    # -- helpers --------------------------------------------------------------------------

    def _usable_version(self, key: KeyVaultKey, key_uri: AzureKeyUri, operation: str) -> str:
        props = key.properties
        label = key_uri.unversioned_uri
        version = props.version
        if not isinstance(version, str) or not KEY_VERSION_PATTERN.match(version):
            raise KmsError(f"vault returned key {label} without a valid version")
        if key_uri.version is not None and version != key_uri.version:
            raise KmsError(
                f"vault returned version {version!r} of {label}, asked {key_uri.version!r}"
            )
        if props.enabled is False:
            raise KeyDisabledError(f"key {label} version {version} is disabled")
        now = self._clock()
        if props.not_before is not None and now < props.not_before:
            raise KeyDisabledError(
                f"key {label} version {version} is not valid before {props.not_before}"
            )
        if props.expires_on is not None and now >= props.expires_on:
            raise KeyDisabledError(f"key {label} version {version} expired at {props.expires_on}")
        if key.key_operations is not None and operation not in key.key_operations:
            raise KmsPermissionError(f"key {label} version {version} does not permit {operation}")
        return version

    def _vault_key_operation(
        self, key_uri: AzureKeyUri, version: str, operation: str, value: bytes, describe: str
    ) -> bytes:
        """POST /keys/{name}/{version}/{wrapkey|unwrapkey} with A256KW through the SDK pipeline."""
        request_body = {"alg": KeyWrapAlgorithm.aes_256.value, "value": _b64url(value)}

        def call() -> bytes:
            request = HttpRequest(
                "POST", f"/keys/{key_uri.name}/{version}/{operation}", json=request_body
            )
            response = self._key_client(key_uri).send_request(request)
            response.raise_for_status()
            body = response.content
            if len(body) > _MAX_RESPONSE_BYTES:
                raise KmsError(f"{describe}: vault response of {len(body)} bytes is too large")
            try:
                document = json.loads(body)
            except ValueError as exc:
                raise KmsError(f"{describe}: vault response is not JSON") from exc
            if not isinstance(document, dict) or "value" not in document:
                raise KmsError(f"{describe}: vault response has no 'value'")
            return _b64url_decode(document["value"], "value")

        return call_vault(
            call, describe, self._backoff, self._sleep, unwrapping=operation == "unwrapkey"
        )

    def _key_client(self, key_uri: AzureKeyUri) -> KeyClient:
        with self._lock:
            client = self._key_clients.get(key_uri.host)
            if client is None:
                client = KeyClient(key_uri.vault_url, self._credential, **self._client_options)
                _remember(self._key_clients, key_uri.host, client)
            return client

    def _crypto_client(self, key_uri: AzureKeyUri, version: str) -> CryptographyClient:
        key_id = key_uri.key_id(version)
        with self._lock:
            client = self._crypto_clients.get(key_id)
            if client is None:
                client = CryptographyClient(key_id, self._credential, **self._client_options)
                _remember(self._crypto_clients, key_id, client)
            return client


def _remember(cache: OrderedDict[str, Any], key: str, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _CLIENT_CACHE_SIZE:
        cache.popitem(last=False)
