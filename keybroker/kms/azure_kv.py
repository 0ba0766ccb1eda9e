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
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.polling import LROPoller
from azure.core.rest import HttpRequest
from azure.keyvault.keys import DeletedKey, KeyClient, KeyVaultKey
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

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

SCHEME = "azure-kv"
AAD_LABEL = b"sealbeam/azure-kv/dek-aad/v1\x00"
AZURE_VAULT_DOMAINS = (
    "vault.azure.net",
    "managedhsm.azure.net",
    "vault.azure.cn",
    "managedhsm.azure.cn",
    "vault.usgovcloudapi.net",
    "managedhsm.usgovcloudapi.net",
)

_FORMAT_V1 = 0x01
_ALG_RSA_OAEP_256 = 0x01
_ALG_A256KW = 0x02
_ALG_NAMES = {_ALG_RSA_OAEP_256: "RSA-OAEP-256", _ALG_A256KW: "A256KW"}
_RSA_KEY_TYPES = frozenset({"RSA", "RSA-HSM"})
_OCT_KEY_TYPES = frozenset({"oct", "oct-HSM"})

_MAX_URI_CHARS = 512
_MAX_AAD_BYTES = 64 * 1024
_MIN_DEK_BYTES, _MAX_DEK_BYTES = 16, 64
_MAX_VAULT_CIPHERTEXT = 512  # RSA-4096 output; AES-KW of 96 bytes is 104
_MAX_RESPONSE_BYTES = 64 * 1024
_MAX_RELEASE_TOKEN_CHARS = 256 * 1024
_DIGEST_BYTES = 32
_CLIENT_CACHE_SIZE = 128

_HOST_RE = re.compile(r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$")
_NAME_RE = re.compile(r"^[A-Za-z0-9-]{1,127}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9]{1,64}$")


class KeyDisabledError(KmsPermissionError):
    """The key exists but the vault refuses to use it: disabled, expired or not yet valid."""


class KeyReleaseDeniedError(KmsPermissionError):
    """The vault refused Secure Key Release: the target token did not satisfy the release policy
    (or the caller lacks keys/release)."""


class KmsInputError(KmsError):
    """A key URI, DEK, AAD or wrapped-key blob handed to this backend is malformed."""


@dataclass(frozen=True)
class AzureKeyUri:
    """A parsed ``azure-kv://HOST/keys/NAME[/VERSION]`` key reference."""

    host: str
    name: str
    version: str | None

    @property
    def vault_url(self) -> str:
        return f"https://{self.host}"

    @property
    def unversioned_uri(self) -> str:
        return f"{SCHEME}://{self.host}/keys/{self.name}"

    def key_id(self, version: str) -> str:
        """The vault's own identifier (``kid``) of one version of this key."""
        return f"{self.vault_url}/keys/{self.name}/{version}"

    @classmethod
    def parse(cls, uri: str, allowed_hosts: frozenset[str] = frozenset()) -> AzureKeyUri:
        """Parse and check a key URI; the host must be an Azure vault domain or allowed by name."""
        if not isinstance(uri, str) or len(uri) > _MAX_URI_CHARS:
            raise KmsInputError(
                f"azure-kv key URI must be a string of at most {_MAX_URI_CHARS} chars"
            )
        prefix = f"{SCHEME}://"
        if not uri.startswith(prefix):
            raise KmsInputError(f"key URI {uri!r} does not start with {prefix!r}")
        parts = uri[len(prefix) :].split("/")
        if len(parts) not in (3, 4) or parts[1] != "keys":
            raise KmsInputError(
                f"key URI {uri!r} is not of the form {prefix}HOST/keys/NAME[/VERSION]"
            )
        host, name = parts[0].lower(), parts[2]
        version = parts[3] if len(parts) == 4 else None
        if not _HOST_RE.match(host) or not _host_is_allowed(host, allowed_hosts):
            raise KmsInputError(
                f"key URI host {host!r} is neither an Azure Key Vault / Managed HSM domain "
                f"({', '.join(AZURE_VAULT_DOMAINS)}) nor an explicitly allowed host"
            )
        if not _NAME_RE.match(name):
            raise KmsInputError(f"key name {name!r} must be 1-127 letters, digits or '-'")
        if version is not None and not _VERSION_RE.match(version):
            raise KmsInputError(f"key version {version!r} must be 1-64 letters or digits")
        return cls(host=host, name=name, version=version)


def _host_is_allowed(host: str, allowed_hosts: frozenset[str]) -> bool:
    if host in allowed_hosts:
        return True
    bare = host.split(":", 1)[0]
    return ":" not in host and any(
        bare.endswith("." + domain) and len(bare) > len(domain) + 1
        for domain in AZURE_VAULT_DOMAINS
    )


_T = TypeVar("_T")


def _call_vault(
    call: Callable[[], _T],
    describe: str,
    backoff: Backoff,
    sleep: Callable[[float], None],
    *,
    unwrapping: bool = False,
) -> _T:
    """Run one vault call, errors translated to typed KMS errors, transient ones retried."""

    def translated() -> _T:
        try:
            return call()
        except (AzureError, ValueError) as error:
            raise translate_azure_error(error, describe, unwrapping=unwrapping) from error

    return call_with_retry(translated, backoff=backoff, description=describe, sleep=sleep)


def translate_azure_error(
    error: BaseException, describe: str, *, unwrapping: bool = False
) -> KmsError:
    """Map an azure-core / SDK exception to the broker's typed KMS errors (one place).

    ``unwrapping``: a 400 from an unwrap means the ciphertext did not decrypt under the key, which
    callers must not tell apart from a wrong AAD (KmsUnwrapError, no detail).
    """
    if isinstance(error, KmsError):
        return error
    if isinstance(error, HttpResponseError) and error.status_code is not None:
        status = error.status_code
        code, message, inner_code = _service_error_details(error)
        detail = f"{describe}: HTTP {status} {code}: {message}"
        if status == 401:
            return KmsPermissionError(detail)
        if status == 403:
            return (
                KeyDisabledError(detail)
                if _says_disabled(message, inner_code)
                else (KmsPermissionError(detail))
            )
        if status == 404:
            return KeyNotFoundError(detail)
        if status in (408, 429) or status >= 500:
            return KmsTransientError(detail)
        if status == 400 and unwrapping:
            return KmsUnwrapError()
        return KmsError(detail)
    if isinstance(error, ClientAuthenticationError):
        return KmsPermissionError(
            f"{describe}: credential could not authenticate: {_clip(str(error))}"
        )
    if isinstance(error, (ServiceRequestError, ServiceResponseError)):
        if _caused_by_tls_failure(error):
            return KmsError(
                f"{describe}: TLS verification of the vault failed: {_clip(str(error))}"
            )
        return KmsTransientError(f"{describe}: vault unreachable: {_clip(str(error))}")
    return KmsError(f"{describe}: {type(error).__name__}: {_clip(str(error))}")


def _service_error_details(error: HttpResponseError) -> tuple[str, str, str]:
    odata = error.error
    if odata is None:
        return "-", _clip(error.reason or "no error body"), ""
    inner = odata.innererror if isinstance(odata.innererror, dict) else {}
    return (
        _clip(str(odata.code or "-")),
        _clip(str(odata.message or "")),
        _clip(str(inner.get("code", ""))),
    )


def _says_disabled(message: str, inner_code: str) -> bool:
    lowered = message.lower()
    return (
        inner_code in ("KeyDisabled", "KeyExpired") or "disabled" in lowered or "expired" in lowered
    )


def _caused_by_tls_failure(error: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError) or "SSLError" in type(current).__name__:
            return True
        inner = getattr(current, "inner_exception", None)
        current = (
            inner
            if isinstance(inner, BaseException)
            else (current.__cause__ or current.__context__)
        )
    return False


def _clip(text: str, limit: int = 300) -> str:
    printable = "".join(ch if ch.isprintable() else "?" for ch in text)
    return printable if len(printable) <= limit else printable[:limit] + "..."


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


class AzureKeyVaultKms:
    """KeyManagementService over Azure Key Vault and Managed HSM (scheme ``azure-kv``).

    Each `wrap` reads the key once (current version, type, enabled state); each `unwrap` calls the
    vault. Permissions needed: keys/get, keys/wrapKey, keys/unwrapKey.
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
            key = _call_vault(
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
            wrapped = _call_vault(
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
        if not isinstance(version, str) or not _VERSION_RE.match(version):
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
                payload = _call_vault(
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

    # -- key lifecycle (keybroker.shred) ----------------------------------------------------

    #: `destroy_version` disables a version; Key Vault keeps its material (see the module doc).
    erases_destroyed_versions = False

    def primary_version(self, kek_uri: str) -> str:
        """The key's current version (GET /keys/{name}): the one new wraps use."""
        key_uri = self._lifecycle_uri(kek_uri)
        key = self._lifecycle_call(
            key_uri, lambda client: client.get_key(key_uri.name), "read the current version of"
        )
        return self._returned_version(key, key_uri)

    def rotate(self, kek_uri: str) -> KeyReference:
        """Create a new version of the key (same type and size) and make it current.

        Older versions keep unwrapping until they are disabled or the key is destroyed. Needs
        keys/rotate (Key Vault API 7.3 or later)."""
        key_uri = self._lifecycle_uri(kek_uri)
        key = self._lifecycle_call(
            key_uri, lambda client: client.rotate_key(key_uri.name), "rotate"
        )
        return KeyReference(
            uri=key_uri.unversioned_uri, version=self._returned_version(key, key_uri)
        )

    def disable_version(self, kek_uri: str, version: str) -> None:
        """Stop one non-current version from unwrapping (reversible; the material stays)."""
        self._set_version_enabled(kek_uri, version, enabled=False)

    def enable_version(self, kek_uri: str, version: str) -> None:
        """Undo `disable_version`."""
        self._set_version_enabled(kek_uri, version, enabled=True)

    def destroy_version(self, kek_uri: str, version: str) -> None:
        """The nearest Key Vault has to destroying one version: disable it.

        Key Vault deletes and purges whole keys only, never one version, so the material of
        ``version`` stays in the vault (``erases_destroyed_versions`` is False and
        `keybroker.shred` says so in its result and ledger entry). Use `destroy_key` to erase."""
        self.disable_version(kek_uri, version)

    def destroy_key(self, kek_uri: str) -> None:
        """Delete every version of the key and purge it: the whole-key crypto-shred.

        Waits on the SDK's poller until the soft delete completes, then purges. Afterwards every
        wrap and unwrap under the key fails with KeyDestroyedError here (KeyNotFoundError in other
        processes unless they get the key in ``purged_keys``). Repeatable: a key found already
        deleted is purged; one this backend already purged raises KeyDestroyedError. A vault with
        purge protection refuses the purge (KmsPermissionError): the key is then deleted but
        recoverable until its scheduled purge date, when Azure erases it.
        Needs keys/delete, keys/get and keys/purge."""
        key_uri = self._lifecycle_uri(kek_uri)
        label = key_uri.unversioned_uri
        client = self._key_client(key_uri)
        describe = f"azure-kv delete of {label}"
        deleted: DeletedKey | None = None
        try:
            poller = _call_vault(
                lambda: client.begin_delete_key(
                    key_uri.name, _polling_interval=self._delete_polling_interval
                ),
                describe,
                self._backoff,
                self._sleep,
            )
        except KeyNotFoundError:
            poller = None  # deleted before (an interrupted shred?): purge what is left
        if poller is not None:
            deleted = self._wait_until_deleted(poller, describe)
            if deleted.recovery_id is None:  # soft delete is off: the delete was final
                self._record_purge(key_uri)
                return
        try:
            _call_vault(
                lambda: client.purge_deleted_key(key_uri.name),
                f"azure-kv purge of {label}",
                self._backoff,
                self._sleep,
            )
        except KeyNotFoundError as error:
            if deleted is None:  # neither a live key nor a deleted one
                raise self._not_found_or_destroyed(key_uri, error) from error
            # deleted by this call and gone from the deleted keys as well: purged already
        except KmsPermissionError as error:
            until = deleted.scheduled_purge_date if deleted is not None else None
            raise KmsPermissionError(
                f"key {label} is deleted but NOT purged (recoverable"
                + (f" until {until.isoformat()}" if until else "")
                + f"): {error}"
            ) from error
        self._record_purge(key_uri)

    def _set_version_enabled(self, kek_uri: str, version: str, *, enabled: bool) -> None:
        key_uri = self._lifecycle_uri(kek_uri)
        if not isinstance(version, str) or not _VERSION_RE.match(version):
            raise KmsInputError(f"key version {version!r} must be 1-64 letters or digits")
        label = key_uri.unversioned_uri
        if not enabled and self.primary_version(kek_uri) == version:
            raise KmsPermissionError(
                f"key {label} version {version} is the current version; rotate before disabling it"
            )
        action = "enable" if enabled else "disable"
        key = self._lifecycle_call(
            key_uri,
            lambda client: client.update_key_properties(key_uri.name, version, enabled=enabled),
            f"{action} version {version} of",
        )
        if key.properties.version != version or key.properties.enabled is not enabled:
            raise KmsError(f"vault did not {action} version {version} of {label}")

    def _wait_until_deleted(self, poller: LROPoller[DeletedKey], describe: str) -> DeletedKey:
        try:
            poller.wait(timeout=self._delete_timeout)
        except (AzureError, ValueError) as error:
            raise translate_azure_error(error, describe + " (waiting)") from error
        if not poller.done():
            raise KmsTransientError(
                f"{describe}: the soft delete did not complete within {self._delete_timeout} s; "
                "run the shred again to purge the key"
            )
        return poller.result()

    def _lifecycle_uri(self, kek_uri: str) -> AzureKeyUri:
        key_uri = AzureKeyUri.parse(kek_uri, self._allowed_hosts)
        if key_uri.version is not None:
            raise KmsInputError(
                f"key URI {kek_uri!r} names a version; rotation and shredding take the key URI "
                f"without one ({key_uri.unversioned_uri})"
            )
        return key_uri

    def _lifecycle_call(
        self, key_uri: AzureKeyUri, call: Callable[[KeyClient], _T], action: str
    ) -> _T:
        client = self._key_client(key_uri)
        try:
            return _call_vault(
                lambda: call(client),
                f"azure-kv {action} {key_uri.unversioned_uri}",
                self._backoff,
                self._sleep,
            )
        except KeyNotFoundError as error:
            raise self._not_found_or_destroyed(key_uri, error) from error

    def _returned_version(self, key: KeyVaultKey, key_uri: AzureKeyUri) -> str:
        version = key.properties.version
        if not isinstance(version, str) or not _VERSION_RE.match(version):
            raise KmsError(f"vault returned key {key_uri.unversioned_uri} without a valid version")
        return version

    def _record_purge(self, key_uri: AzureKeyUri) -> None:
        with self._lock:
            self._purged_keys.add(key_uri.unversioned_uri)

    def _not_found_or_destroyed(self, key_uri: AzureKeyUri, error: KeyNotFoundError) -> KmsError:
        """A purged key is a 404 like a missing one; say "destroyed" only when we know."""
        label = key_uri.unversioned_uri
        with self._lock:
            purged = label in self._purged_keys
        if not purged:
            return error
        return KeyDestroyedError(
            f"key {label} was deleted and purged from the vault (whole-key crypto-shred); "
            "nothing wrapped under any of its versions can be unwrapped"
        )

    # -- helpers --------------------------------------------------------------------------

    def _usable_version(self, key: KeyVaultKey, key_uri: AzureKeyUri, operation: str) -> str:
        props = key.properties
        label = key_uri.unversioned_uri
        version = props.version
        if not isinstance(version, str) or not _VERSION_RE.match(version):
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

        return _call_vault(
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


def release_key_to_tee(
    key_client: KeyClient,
    name: str,
    target_attestation_token: str,
    *,
    version: str | None = None,
    algorithm: str = "RSA_AES_KEY_WRAP_256",
    nonce: str | None = None,
    backoff: Backoff | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Ask the vault to release key ``name`` to the TEE that the MAA token describes.

    Returns the vault's signed JWS (compact form); the key inside is wrapped to the runtime key
    in the token, so this process cannot read it. The vault, not this function, checks the token
    against the key's release policy. ``algorithm`` is the export ``enc``: RSA_AES_KEY_WRAP_256
    (default), RSA_AES_KEY_WRAP_384 or CKM_RSA_AES_KEY_WRAP.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise KmsInputError(f"key name {name!r} must be 1-127 letters, digits or '-'")
    if version is not None and (not isinstance(version, str) or not _VERSION_RE.match(version)):
        raise KmsInputError(f"key version {version!r} must be 1-64 letters or digits")
    if not isinstance(target_attestation_token, str) or not 0 < len(target_attestation_token) <= (
        _MAX_RELEASE_TOKEN_CHARS
    ):
        raise KmsInputError("target attestation token must be a non-empty string of bounded size")
    if algorithm not in ("RSA_AES_KEY_WRAP_256", "RSA_AES_KEY_WRAP_384", "CKM_RSA_AES_KEY_WRAP"):
        raise KmsInputError(f"export algorithm {algorithm!r} is not supported")
    describe = f"azure-kv release of key {name}" + (f" version {version}" if version else "")

    def call() -> str:
        try:
            result = key_client.release_key(
                name, target_attestation_token, version=version, algorithm=algorithm, nonce=nonce
            )
        except HttpResponseError as error:
            translated = translate_azure_error(error, describe)
            if type(translated) is KmsPermissionError and error.status_code == 403:
                raise KeyReleaseDeniedError(str(translated)) from error
            raise translated from error
        return result.value

    token = _call_vault(call, describe, backoff or Backoff(), sleep)
    if not isinstance(token, str) or not 0 < len(token) <= _MAX_RELEASE_TOKEN_CHARS:
        raise KmsError(f"{describe}: vault returned no release token of bounded size")
    if token.count(".") != 2:
        raise KmsError(f"{describe}: vault release token is not a compact JWS")
    return token
