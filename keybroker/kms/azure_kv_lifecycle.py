"""Key lifecycle of Azure Key Vault keys for `keybroker.shred`: rotate, disable, destroy.

`AzureKeyLifecycle` is the part of `keybroker.kms.azure_kv.AzureKeyVaultKms` that changes keys:
`primary_version` (GET key: the current version), `rotate` (``KeyClient.rotate_key``: a new
version of the same type and size becomes current, older versions still unwrap),
`disable_version` / `enable_version` (PATCH the version's ``attributes.enabled``),
`destroy_version` and `destroy_key`. Key Vault cannot erase one version of a key, so
`destroy_version` only disables it (``erases_destroyed_versions = False``); `destroy_key` deletes
the whole key, waits on the SDK's soft-delete poller, and purges it. It also remembers which keys
were purged, so that their 404 reads KeyDestroyedError rather than KeyNotFoundError.

It does not wrap or unwrap, create keys, set rotation policies or recover deleted keys. It relies on
the vault clients, retry policy and lock that `AzureKeyVaultKms` sets up in its constructor.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from azure.core.exceptions import AzureError
from azure.core.polling import LROPoller
from azure.keyvault.keys import DeletedKey, KeyClient, KeyVaultKey

from envelope.keys import KeyReference
from keybroker.kms.azure_kv_errors import KmsInputError, call_vault, translate_azure_error
from keybroker.kms.azure_kv_names import KEY_VERSION_PATTERN, AzureKeyUri
from keybroker.kms.base import (
    KeyDestroyedError,
    KeyNotFoundError,
    KmsError,
    KmsPermissionError,
    KmsTransientError,
)
from keybroker.kms.retry import Backoff

__all__ = ["AzureKeyLifecycle"]

_T = TypeVar("_T")


class AzureKeyLifecycle:
    """Rotation and crypto-shredding of Key Vault keys; mixed into `AzureKeyVaultKms`.

    Permissions needed: keys/get, keys/rotate, keys/update, keys/delete and keys/purge."""

    # Set by AzureKeyVaultKms.__init__.
    _allowed_hosts: frozenset[str]
    _backoff: Backoff
    _sleep: Callable[[float], None]
    _lock: threading.Lock
    _purged_keys: set[str]
    _delete_polling_interval: float
    _delete_timeout: float

    if TYPE_CHECKING:

        def _key_client(self, key_uri: AzureKeyUri) -> KeyClient: ...

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
            poller = call_vault(
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
            call_vault(
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
        if not isinstance(version, str) or not KEY_VERSION_PATTERN.match(version):
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
            return call_vault(
                lambda: call(client),
                f"azure-kv {action} {key_uri.unversioned_uri}",
                self._backoff,
                self._sleep,
            )
        except KeyNotFoundError as error:
            raise self._not_found_or_destroyed(key_uri, error) from error

    def _returned_version(self, key: KeyVaultKey, key_uri: AzureKeyUri) -> str:
        version = key.properties.version
        if not isinstance(version, str) or not KEY_VERSION_PATTERN.match(version):
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
