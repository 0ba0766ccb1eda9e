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
  ``force``, which rotates first and then destroys the version that was primary. A backend
  that cannot erase a single version (Azure Key Vault) declares
  ``erases_destroyed_versions = False`` and only disables it; the result and the ledger entry
  then say ``material_erased: false`` in plain words, because that is not crypto-shredding.
- :func:`shred_whole_kek`: destroys every version of a KEK at once (the erasure of a
  per-partner KEK) in backends that offer :class:`WholeKekShredding` (``azure-kv``: delete and
  purge the key). Refused for a KEK that a region's new outputs are wrapped under unless
  ``force``.

Every decision, done or refused, is appended to the audit ledger. Backends offer this
through the :class:`KekLifecycle` methods (``local``, ``gcp-kms``, ``pkcs11``, ``azure-kv``).
This module holds no key material and never unwraps anything.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import NoReturn, Protocol, runtime_checkable

from envelope.keys import KeyReference
from keybroker.kms.base import KeyDestroyedError, KmsError
from keybroker.ledger import AuditLedger

__all__ = [
    "KekLifecycle",
    "KeyOperationUnsupportedError",
    "RotationResult",
    "ShredRefusedError",
    "ShredResult",
    "WholeKekShredResult",
    "WholeKekShredding",
    "rotate_kek",
    "shred_kek_version",
    "shred_whole_kek",
]

ROTATE_EVENT = "kek-rotate"
SHRED_EVENT = "kek-shred"
VERSION_KEPT_NOTE = (
    "the backend cannot erase a single key version: it disabled this version, but the key "
    "material stays in the vault and enabling the version again restores access (not "
    "crypto-shredding); shred the whole key (--whole-key) to erase it"
)


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


@runtime_checkable
class WholeKekShredding(Protocol):
    """A backend that destroys every version of a KEK at once (a per-partner KEK's erasure).

    Afterwards every wrap and unwrap under the KEK fails; a repeat raises KeyDestroyedError."""

    def destroy_key(self, kek_uri: str) -> None: ...


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
    material_erased: bool = True  # False: only disabled (the backend cannot erase one version)

    def to_json(self) -> dict[str, object]:
        if self.material_erased:
            return {"kek": self.kek_uri, "destroyed_version": self.version,
                    "rotated_to": self.rotated_to}
        return {"kek": self.kek_uri, "disabled_version": self.version,
                "rotated_to": self.rotated_to, "material_erased": False,
                "note": VERSION_KEPT_NOTE}


@dataclass(frozen=True)
class WholeKekShredResult:
    kek_uri: str
    already_destroyed: bool  # a repeat: the backend had destroyed the key before

    def to_json(self) -> dict[str, object]:
        return {"kek": self.kek_uri, "destroyed": "every version (whole key)",
                "already_destroyed": self.already_destroyed}


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
    erases = _erases_destroyed_versions(backend)
    if not erases:
        details.update({"material_erased": False, "effect": VERSION_KEPT_NOTE})
    rotated_to = None
    if backend.primary_version(kek_uri) == version:
        if not force:
            _refuse_shred(ledger, details,
                          f"version {version} is the primary version of {kek_uri}; rotate "
                          "first (sealbeam keys rotate) and rewrap what must survive, or pass "
                          "--force to rotate and destroy it now")
        rotated_to = rotate_kek(kms, kek_uri, ledger=ledger).new_version
        details["rotated_to"] = rotated_to
    _destroy_recorded(lambda: backend.destroy_version(kek_uri, version), ledger, details)
    return ShredResult(kek_uri, version, rotated_to, material_erased=erases)


def shred_whole_kek(
    kms: object,
    kek_uri: str,
    *,
    ledger: AuditLedger,
    serving_regions: Collection[str] = (),
    force: bool = False,
) -> WholeKekShredResult:
    """Destroy every version of ``kek_uri``: all data under it becomes unreadable.

    Meant for a per-partner (or per-subject) KEK. ``serving_regions`` are the regions whose new
    outputs are wrapped under this KEK; with any, the shred is refused unless ``force`` (their
    next wraps would fail). Repeating a finished shred is reported as done.
    """
    if not isinstance(kms, WholeKekShredding):
        raise KeyOperationUnsupportedError(
            f"the {_scheme(kms)} backend cannot destroy whole KEKs here"
        )
    details: dict[str, object] = {"kek": kek_uri, "whole_key": True, "backend": _scheme(kms)}
    regions = sorted(serving_regions)
    if regions:
        details["serving_regions"] = regions
        if not force:
            _refuse_shred(ledger, details,
                          f"{kek_uri} is the KEK of region(s) {', '.join(regions)}: their new "
                          "outputs would fail to wrap; point them at another KEK first, or "
                          "pass --force")
    already_destroyed = _destroy_recorded(lambda: kms.destroy_key(kek_uri), ledger, details)
    return WholeKekShredResult(kek_uri, already_destroyed)


def _refuse_shred(ledger: AuditLedger, details: dict[str, object], reason: str) -> NoReturn:
    """Record the refusal with its reason, then raise it."""
    ledger.append(SHRED_EVENT, "denied", {**details, "reason": reason})
    raise ShredRefusedError(reason)


def _destroy_recorded(destroy: Callable[[], None], ledger: AuditLedger,
                      details: dict[str, object]) -> bool:
    """Run ``destroy`` and record its outcome; True when the key was already destroyed (a
    repeat, recorded as done). A KMS failure is recorded as denied and raised."""
    already_destroyed = False
    try:
        destroy()
    except KeyDestroyedError:
        already_destroyed = True
        details["already_destroyed"] = True
    except KmsError as error:
        ledger.append(SHRED_EVENT, "denied",
                      {**details, "reason": f"{type(error).__name__}: {error}"})
        raise
    ledger.append(SHRED_EVENT, "granted", details)
    return already_destroyed


def _erases_destroyed_versions(backend: object) -> bool:
    """Whether ``destroy_version`` erases material; backends that only disable say False."""
    return getattr(backend, "erases_destroyed_versions", True) is not False


def _scheme(kms: object) -> str:
    return str(getattr(kms, "scheme", type(kms).__name__))
