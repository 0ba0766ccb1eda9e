"""Picks the KMS backend for a KEK URI by its scheme (``local://``, later ``gcp-kms://`` ...).

``kms_for_uri`` opens a fresh backend per call (what a command-line tool wants);
``KmsRegistry`` opens each backend once and reuses it (what the long-running broker wants).
A scheme with no configured backend raises ``UnsupportedKmsSchemeError``: a URI never falls
through to some other backend. This module holds no keys itself.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from keybroker.kms.base import KeyManagementService, UnsupportedKmsSchemeError
from keybroker.kms.local import LOCAL_SCHEME, LocalKeyring

if TYPE_CHECKING:
    from envelope.keys import WrappedKey

__all__ = ["KmsRegistry", "KmsSettings", "kms_for_uri", "uri_scheme"]

_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]{0,31})://")


class KmsSettings(Protocol):
    """The part of BrokerSettings the registry reads."""

    keyring_path: Path


def uri_scheme(uri: str) -> str:
    """The scheme of a KEK URI (``local`` for ``local://keyring/eu/kek-1``)."""
    match = _SCHEME.match(uri) if isinstance(uri, str) else None
    if match is None:
        raise UnsupportedKmsSchemeError(f"not a KEK URI: {uri!r} (expected <scheme>://...)")
    return match.group(1)


def _open_local(settings: KmsSettings) -> KeyManagementService:
    return LocalKeyring.open(settings.keyring_path)


_BACKEND_OPENERS: dict[str, Callable[[KmsSettings], KeyManagementService]] = {
    LOCAL_SCHEME: _open_local,
}


def kms_for_uri(uri: str, settings: KmsSettings) -> KeyManagementService:
    """Open the backend that serves ``uri``."""
    scheme = uri_scheme(uri)
    opener = _BACKEND_OPENERS.get(scheme)
    if opener is None:
        raise UnsupportedKmsSchemeError(
            f"no KMS backend for scheme {scheme!r} "
            f"(configured: {', '.join(sorted(_BACKEND_OPENERS))})"
        )
    return opener(settings)


class KmsRegistry:
    """Backends opened once per scheme and shared; thread-safe."""

    def __init__(
        self,
        settings: KmsSettings,
        backends: dict[str, KeyManagementService] | None = None,
    ) -> None:
        self._settings = settings
        self._backends: dict[str, KeyManagementService] = dict(backends or {})
        self._lock = threading.Lock()

    def for_uri(self, uri: str) -> KeyManagementService:
        scheme = uri_scheme(uri)
        with self._lock:
            backend = self._backends.get(scheme)
            if backend is None:
                backend = kms_for_uri(uri, self._settings)
                self._backends[scheme] = backend
            return backend

    def wrap(self, kek_uri: str, dek: bytes, aad: bytes) -> WrappedKey:
        return self.for_uri(kek_uri).wrap(kek_uri, dek, aad)

    def unwrap(self, wrapped: WrappedKey, aad: bytes) -> bytes:
        return self.for_uri(wrapped.kek.uri).unwrap(wrapped, aad)
