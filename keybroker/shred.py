"""KEK lifecycle for erasure: rotate a KEK, and crypto-shred one of its versions.

Crypto-shredding erases data by destroying the key that protects it: once a KEK version is
destroyed, every DEK wrapped under it can no longer be unwrapped, so every envelope sealed
under those DEKs is unreadable everywhere it was copied (backups included), and opening one
fails with ``KeyDestroyedError`` (the broker answers 404 ``key_destroyed``). Data that must
survive is first rewrapped under a newer version (``keybroker.rewrap``).

- :func:`rotate_kek`: a new KEK version becomes primary; new wraps use it, older versions
  still unwrap.
- :func:`shred_kek_version`: destroys one version in backends that allow it. The primary
  version is refused (new data would be wrapped under a key about to vanish) unless
  ``force``, which rotates first and then destroys the version that was primary.

Every decision, done or refused, is appended to the audit ledger. Backends offer this
through the :class:`KekLifecycle` methods (``local``, ``gcp-kms``, ``pkcs11``; Azure Key
Vault rotates and disables but destroys only whole keys). This module holds no key material
and never unwraps anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from envelope.keys import KeyReference
from keybroker.kms.base import KeyDestroyedError, KmsError
from keybroker.ledger import AuditLedger

__all__ = [
    "KekLifecycle",
    "KeyOperationUnsupportedError",
    "RotationResult",
    "ShredRefusedError",
    "ShredResult",
    "rotate_kek",
    "shred_kek_version",
]

ROTATE_EVENT = "kek-rotate"
SHRED_EVENT = "kek-shred"


class KeyOperationUnsupportedError(KmsError):
    """The backend serving this KEK cannot rotate it or destroy one of its versions."""


class ShredRefusedError(KmsError):
    """The shred was refused (the primary version without ``force``)."""


@runtime_checkable
class KekLifecycle(Protocol):
    """The administrative side of a KMS backend that rotation and shredding need."""

    def primary_version(self, kek_uri: str) -> str: ...

    def rotate(self, kek_uri: str) -> KeyReference: ...

    def destroy_version(self, kek_uri: str, version: str) -> None: ...


@dataclass(frozen=True)
class RotationResult:
    kek_uri: str
    previous_version: str
    new_version: str

    def to_json(self) -> dict[str, str]:
        return {"kek": self.kek_uri, "previous_version": self.previous_version,
                "new_version": self.new_version}


@dataclass(frozen=True)
class ShredResult:
    kek_uri: str
    version: str
    rotated_to: str | None  # the new primary when ``force`` rotated first

    def to_json(self) -> dict[str, str | None]:
        return {"kek": self.kek_uri, "destroyed_version": self.version,
                "rotated_to": self.rotated_to}


def _lifecycle(kms: object, operation: str) -> KekLifecycle:
    if not isinstance(kms, KekLifecycle):
        scheme = getattr(kms, "scheme", type(kms).__name__)
        raise KeyOperationUnsupportedError(f"the {scheme} backend cannot {operation} KEKs here")
    return kms


def rotate_kek(kms: object, kek_uri: str, *, ledger: AuditLedger) -> RotationResult:
    """Make a new version of ``kek_uri`` primary and record it in the ledger."""
    backend = _lifecycle(kms, "rotate")
    previous = backend.primary_version(kek_uri)
    try:
        created = backend.rotate(kek_uri)
    except KmsError as error:
        ledger.append(ROTATE_EVENT, "denied", {"kek": kek_uri, "previous_version": previous,
                                               "reason": f"{type(error).__name__}: {error}"})
        raise
    result = RotationResult(kek_uri, previous, created.version)
    ledger.append(ROTATE_EVENT, "granted", {**result.to_json(), "backend": _scheme(kms)})
    return result


def shred_kek_version(
    kms: object, kek_uri: str, version: str, *, ledger: AuditLedger, force: bool = False
) -> ShredResult:
    """Destroy ``version`` of ``kek_uri``; refuse the primary unless ``force`` (rotate first).

    Destroying a version that is already destroyed is reported as done: shredding is
    idempotent, so an interrupted run can be repeated.
    """
    backend = _lifecycle(kms, "destroy versions of")
    details: dict[str, object] = {"kek": kek_uri, "version": version, "backend": _scheme(kms)}
    rotated_to = None
    if backend.primary_version(kek_uri) == version:
        if not force:
            reason = (f"version {version} is the primary version of {kek_uri}; rotate first "
                      "(sealbeam keys rotate) and rewrap what must survive, or pass --force "
                      "to rotate and destroy it now")
            ledger.append(SHRED_EVENT, "denied", {**details, "reason": reason})
            raise ShredRefusedError(reason)
        rotated_to = rotate_kek(kms, kek_uri, ledger=ledger).new_version
        details["rotated_to"] = rotated_to
    try:
        backend.destroy_version(kek_uri, version)
    except KeyDestroyedError:
        details["already_destroyed"] = True
    except KmsError as error:
        ledger.append(SHRED_EVENT, "denied",
                      {**details, "reason": f"{type(error).__name__}: {error}"})
        raise
    ledger.append(SHRED_EVENT, "granted", details)
    return ShredResult(kek_uri, version, rotated_to)


def _scheme(kms: object) -> str:
    return str(getattr(kms, "scheme", type(kms).__name__))
