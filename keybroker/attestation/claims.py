"""Normalized claims: what a verifier proved about a TEE, in one shape for every TEE kind.

What it does: holds the verified facts (TEE kind, measurement, debug, TCB, report_data,
whether the chain ended at a simulated dev root, and — for TDX — the TCB status computed
from Intel's collateral) that `keybroker.policy` reads, and turns them into JSON for the
audit ledger. What it does not: verify anything or decide release; a `Claims` object exists
only after a `Verifier` accepted the evidence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["KNOWN_TEES", "Claims"]

KNOWN_TEES = frozenset({"sev-snp", "tdx", "azure-cvm", "maa", "confidential-space"})
REPORT_DATA_SIZE = 64
_TCB_STATUS = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")
_LOWER_HEX = re.compile(r"^(?:[0-9a-f]{2})*$")


def _freeze(value: Any) -> Any:
    """Read-only view of nested mappings and lists, so claims cannot change after checks."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(key): _freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return value


def _jsonable(value: Any) -> Any:
    """Plain JSON types: mappings to dicts, sequences to lists, bytes to lowercase hex."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"claim value of type {type(value).__name__} is not JSON-able")


@dataclass(frozen=True)
class Claims:
    """Verified facts about one TEE instance; policy decisions read only these."""

    tee: str
    report_version: int
    debug: bool
    measurement: str
    report_data: bytes
    product: str | None
    signing_key: str | None
    tcb: Mapping[str, int]
    simulated: bool
    platform: Mapping[str, object] = field(default_factory=dict)
    raw: Mapping[str, object] = field(default_factory=dict)
    tcb_status: str | None = None
    """TDX: Intel's TCB status ("UpToDate", "OutOfDate", ...) from verified collateral; None
    when no collateral was evaluated or the TEE has no such notion. When not given, it is
    lifted from ``platform["tcb_status"]``, where verifiers written before this field put it."""

    def __post_init__(self) -> None:
        if self.tee not in KNOWN_TEES:
            raise ValueError(f"claims tee {self.tee!r} is not one of {sorted(KNOWN_TEES)}")
        if not isinstance(self.report_version, int) or self.report_version < 0:
            raise ValueError("claims report_version must be a non-negative int")
        if not isinstance(self.debug, bool) or not isinstance(self.simulated, bool):
            raise ValueError("claims debug and simulated must be bool")
        if not isinstance(self.measurement, str) or not _LOWER_HEX.match(self.measurement):
            raise ValueError("claims measurement must be lowercase hex")
        if not isinstance(self.report_data, bytes) or len(self.report_data) != REPORT_DATA_SIZE:
            raise ValueError(f"claims report_data must be {REPORT_DATA_SIZE} bytes")
        for name, value in self.tcb.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"claims tcb component {name!r} must be a non-negative int")
        reported = self.platform.get("tcb_status")
        if self.tcb_status is None and isinstance(reported, str):
            object.__setattr__(self, "tcb_status", reported)
        elif reported is not None and reported != self.tcb_status:
            raise ValueError("claims tcb_status disagrees with platform['tcb_status']")
        if self.tcb_status is not None and (
            not isinstance(self.tcb_status, str) or not _TCB_STATUS.match(self.tcb_status)
        ):
            raise ValueError("claims tcb_status must be None or a status name like 'UpToDate'")
        object.__setattr__(self, "tcb", _freeze(self.tcb))
        object.__setattr__(self, "platform", _freeze(self.platform))
        object.__setattr__(self, "raw", _freeze(self.raw))
        _jsonable(self.platform)  # fail at construction, not when the ledger writes
        _jsonable(self.raw)

    def to_json(self) -> dict:
        """JSON-able dict for the ledger and the broker's session (bytes as lowercase hex)."""
        return {
            "tee": self.tee,
            "report_version": self.report_version,
            "debug": self.debug,
            "measurement": self.measurement,
            "report_data": self.report_data.hex(),
            "product": self.product,
            "signing_key": self.signing_key,
            "tcb": _jsonable(self.tcb),
            "simulated": self.simulated,
            "tcb_status": self.tcb_status,
            "platform": _jsonable(self.platform),
            "raw": _jsonable(self.raw),
        }
