"""Picks the KMS backend for a KEK URI by its scheme, and checks a KEK's residency.

Schemes: ``local://`` (the keyring file, always served), and ``gcp-kms://``, ``azure-kv://``
and ``pkcs11://`` when broker.yaml has their ``kms`` section (``backend_settings``).
``kms_for_uri`` opens a fresh backend per call (what a command-line tool wants);
``KmsRegistry`` opens each backend once, on first use, and reuses it (what the long-running
broker wants). Each backend's module is imported only when its scheme is first used, so a
missing optional package (google-cloud-kms, azure-keyvault-keys, python-pkcs11) breaks only
its own scheme, with ``KmsBackendUnavailableError`` naming the package.

A scheme with no configured backend raises ``UnsupportedKmsSchemeError``: a URI never falls
through to some other backend. Opening a PKCS#11 module clears the calling thread's OpenSSL
error queue afterwards (``clear_openssl_error_queue``): SoftHSM's C_Initialize leaves an
ENGINE error there, which Python's ssl module would otherwise report as the failure of the
next, unrelated TLS handshake on that thread (an Azure Key Vault call, say).

``check_residency`` refuses a Cloud KMS KEK whose location is not one the residency region
allows (``kms.gcp_kms.region_locations``); other schemes carry no location. This module
holds no keys itself.
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from keybroker.kms.backend_settings import KmsBackendSettings, KmsSettingsError
from keybroker.kms.base import KeyManagementService, KmsError, UnsupportedKmsSchemeError
from keybroker.kms.local import LOCAL_SCHEME, LocalKeyring

if TYPE_CHECKING:
    from envelope.keys import WrappedKey

__all__ = [
    "AZURE_KV_SCHEME",
    "GCP_KMS_SCHEME",
    "PKCS11_SCHEME",
    "SUPPORTED_SCHEMES",
    "KekLocationError",
    "KmsBackendUnavailableError",
    "KmsRegistry",
    "KmsSettings",
    "azure_credential",
    "check_residency",
    "clear_openssl_error_queue",
    "kms_for_uri",
    "uri_scheme",
]

GCP_KMS_SCHEME = "gcp-kms"
AZURE_KV_SCHEME = "azure-kv"
PKCS11_SCHEME = "pkcs11"
SUPPORTED_SCHEMES = (LOCAL_SCHEME, GCP_KMS_SCHEME, AZURE_KV_SCHEME, PKCS11_SCHEME)
GCP_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]{0,31})://")
_SECTION_OF_SCHEME = {GCP_KMS_SCHEME: "gcp_kms", AZURE_KV_SCHEME: "azure_kv",
                      PKCS11_SCHEME: "pkcs11"}
_PACKAGE_OF_SCHEME = {
    GCP_KMS_SCHEME: "google-cloud-kms",
    AZURE_KV_SCHEME: "azure-keyvault-keys and azure-identity",
    PKCS11_SCHEME: "python-pkcs11",
}


class KmsBackendUnavailableError(KmsError):
    """The backend of a configured scheme cannot be loaded (its package is not installed)."""


class KekLocationError(KmsError):
    """A KEK lives in a location that the residency region it serves does not allow."""


class KmsSettings(Protocol):
    """The part of BrokerSettings the registry reads (``kms`` is optional)."""

    keyring_path: Path


def uri_scheme(uri: str) -> str:
    """The scheme of a KEK URI (``local`` for ``local://keyring/eu/kek-1``)."""
    match = _SCHEME.match(uri) if isinstance(uri, str) else None
    if match is None:
        raise UnsupportedKmsSchemeError(f"not a KEK URI: {uri!r} (expected <scheme>://...)")
    return match.group(1)


def _backend_settings(settings: KmsSettings) -> KmsBackendSettings:
    found = getattr(settings, "kms", None)
    return found if isinstance(found, KmsBackendSettings) else KmsBackendSettings()


def _configured_schemes(settings: KmsSettings) -> list[str]:
    backends = _backend_settings(settings)
    return [LOCAL_SCHEME] + [
        scheme
        for scheme, section in _SECTION_OF_SCHEME.items()
        if getattr(backends, section) is not None
    ]


def _section(settings: KmsSettings, scheme: str) -> Any:
    section = getattr(_backend_settings(settings), _SECTION_OF_SCHEME[scheme])
    if section is None:
        raise UnsupportedKmsSchemeError(
            f"no KMS backend for scheme {scheme!r}: broker.yaml has no "
            f"kms.{_SECTION_OF_SCHEME[scheme]} section "
            f"(configured: {', '.join(_configured_schemes(settings))})"
        )
    return section


def _unavailable(scheme: str, error: ImportError) -> KmsBackendUnavailableError:
    return KmsBackendUnavailableError(
        f"the {scheme} backend needs {_PACKAGE_OF_SCHEME[scheme]}, which did not import "
        f"({error})"
    )


def _open_local(settings: KmsSettings) -> KeyManagementService:
    return LocalKeyring.open(settings.keyring_path)


def _open_gcp(settings: KmsSettings) -> KeyManagementService:
    section = _section(settings, GCP_KMS_SCHEME)
    try:
        import google.auth
        from google.auth import exceptions as auth_exceptions

        from keybroker.kms.gcp import GcpKms
    except ImportError as error:
        raise _unavailable(GCP_KMS_SCHEME, error) from None
    credentials = None
    if section.credentials_file is not None:
        try:
            credentials, _project = google.auth.load_credentials_from_file(
                str(section.credentials_file), scopes=list(GCP_SCOPES)
            )
        except auth_exceptions.GoogleAuthError as error:
            raise KmsSettingsError(
                f"kms.gcp_kms.credentials_file {section.credentials_file}: unusable ({error})"
            ) from None
    return GcpKms(endpoint=section.endpoint, credentials=credentials)


def azure_credential(section: Any) -> Any:
    """The azure-identity credential that broker.yaml names (nothing is fetched yet)."""
    from azure import identity

    client_id = section.client_id
    kind = section.credential
    try:
        if kind == "managed-identity":
            return identity.ManagedIdentityCredential(client_id=client_id)
        if kind == "workload-identity":
            return (
                identity.WorkloadIdentityCredential(client_id=client_id)
                if client_id
                else identity.WorkloadIdentityCredential()
            )
        if kind == "environment":
            return identity.EnvironmentCredential()
        if kind == "cli":
            return identity.AzureCliCredential()
        if client_id:
            return identity.DefaultAzureCredential(managed_identity_client_id=client_id)
        return identity.DefaultAzureCredential()
    except ValueError as error:  # e.g. workload identity without its environment variables
        raise KmsSettingsError(f"kms.azure_kv.credential {kind!r}: {error}") from None


def _open_azure(settings: KmsSettings) -> KeyManagementService:
    section = _section(settings, AZURE_KV_SCHEME)
    try:
        from keybroker.kms.azure_kv import AzureKeyVaultKms

        credential = azure_credential(section)
    except ImportError as error:
        raise _unavailable(AZURE_KV_SCHEME, error) from None
    return AzureKeyVaultKms(
        credential,
        connection_verify=str(section.ca_bundle) if section.ca_bundle is not None else True,
        allowed_hosts=section.allowed_hosts,
        verify_challenge_resource=section.verify_challenge_resource,
    )


def clear_openssl_error_queue() -> None:
    """Drop errors a native library left on this thread's OpenSSL error queue (best effort).

    SoftHSM's C_Initialize pushes ``ENGINE: no such engine`` and does not clear it; CPython's
    ssl module then reports that stale entry as the error of the next TLS handshake made on
    this thread. The function is looked up through ``_ssl`` so that it is the very libcrypto
    Python's ssl uses.
    """
    try:
        import _ssl

        ctypes.CDLL(_ssl.__file__).ERR_clear_error()
    except (ImportError, OSError, AttributeError):
        return  # no OpenSSL-backed ssl module here: nothing to clear


def _open_pkcs11(settings: KmsSettings) -> KeyManagementService:
    section = _section(settings, PKCS11_SCHEME)
    try:
        from keybroker.kms.pkcs11 import Pkcs11Kms
    except ImportError as error:
        raise _unavailable(PKCS11_SCHEME, error) from None
    try:
        # The PIN is read by the backend from SEALBEAM_PKCS11_PIN; broker.yaml never holds it.
        return Pkcs11Kms(section.module, environ=os.environ)
    finally:
        clear_openssl_error_queue()


_BACKEND_OPENERS: dict[str, Callable[[KmsSettings], KeyManagementService]] = {
    LOCAL_SCHEME: _open_local,
    GCP_KMS_SCHEME: _open_gcp,
    AZURE_KV_SCHEME: _open_azure,
    PKCS11_SCHEME: _open_pkcs11,
}


def kms_for_uri(uri: str, settings: KmsSettings) -> KeyManagementService:
    """Open the backend that serves ``uri``."""
    scheme = uri_scheme(uri)
    opener = _BACKEND_OPENERS.get(scheme)
    if opener is None:
        raise UnsupportedKmsSchemeError(
            f"no KMS backend for scheme {scheme!r} "
            f"(configured: {', '.join(_configured_schemes(settings))})"
        )
    return opener(settings)


def check_residency(kek_uri: str, region: str, settings: KmsSettings) -> None:
    """Refuse a KEK whose location the residency ``region`` does not allow (gcp-kms only)."""
    scheme = uri_scheme(kek_uri)
    if scheme != GCP_KMS_SCHEME:
        return
    section = _section(settings, GCP_KMS_SCHEME)
    try:
        from keybroker.kms import gcp
    except ImportError as error:
        raise _unavailable(GCP_KMS_SCHEME, error) from None
    try:
        gcp.check_location(kek_uri, region, section.region_locations)
    except gcp.KeyLocationError as error:
        raise KekLocationError(str(error)) from None


class KmsRegistry:
    """Backends opened once per scheme, on first use, and shared; thread-safe.

    ``backends`` pre-seeds instances by scheme (tests bind a backend to a fake server this
    way); an injected scheme counts as configured.
    """

    def __init__(
        self,
        settings: KmsSettings,
        backends: Mapping[str, KeyManagementService] | None = None,
    ) -> None:
        self._settings = settings
        self._backends: dict[str, KeyManagementService] = dict(backends or {})
        self._opened: list[KeyManagementService] = []  # closed by close(); injected ones are not
        self._lock = threading.Lock()

    def for_uri(self, uri: str) -> KeyManagementService:
        scheme = uri_scheme(uri)
        with self._lock:
            backend = self._backends.get(scheme)
            if backend is None:
                backend = kms_for_uri(uri, self._settings)
                self._backends[scheme] = backend
                self._opened.append(backend)
            return backend

    def wrap(self, kek_uri: str, dek: bytes, aad: bytes) -> WrappedKey:
        return self.for_uri(kek_uri).wrap(kek_uri, dek, aad)

    def unwrap(self, wrapped: WrappedKey, aad: bytes) -> bytes:
        return self.for_uri(wrapped.kek.uri).unwrap(wrapped, aad)

    def check_residency(self, kek_uri: str, region: str) -> None:
        """KekLocationError when ``kek_uri`` may not serve ``region`` (see module doc)."""
        check_residency(kek_uri, region, self._settings)

    def check_region_keks(self, region_keks: Mapping[str, str]) -> None:
        """At broker start: every region's KEK has a served scheme and an allowed location."""
        for region, kek_uri in sorted(region_keks.items()):
            scheme = uri_scheme(kek_uri)
            with self._lock:
                injected = scheme in self._backends
            if not injected and scheme not in _configured_schemes(self._settings):
                raise UnsupportedKmsSchemeError(
                    f"region_keks.{region}: {kek_uri} needs the {scheme!r} backend, which "
                    f"broker.yaml does not configure "
                    f"(configured: {', '.join(_configured_schemes(self._settings))})"
                )
            self.check_residency(kek_uri, region)

    def close(self) -> None:
        """Close the backends this registry opened that hold sessions (PKCS#11)."""
        with self._lock:
            backends, self._opened = self._opened, []
            for backend in backends:
                self._backends = {
                    scheme: kept for scheme, kept in self._backends.items() if kept is not backend
                }
        for backend in backends:
            close = getattr(backend, "close", None)
            if callable(close):
                close()
