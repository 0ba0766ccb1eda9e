"""Intel PCS JSON documents for TDX: TCB info v3 and QE identity v2, parsed and bounded.

What it does: turns the exact signed JSON text of ``tcbInfo`` (id "TDX", version 3) and
``enclaveIdentity`` (id "TD_QE", version 2) into frozen dataclasses; every field is type
and range checked, lists are bounded, statuses must be Intel's names, and a bad field
raises EvidenceFormatError naming its JSON path. What it does not: check signatures or
dates (see `collateral.py`) or evaluate a TCB (see `tcb.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keybroker.attestation.errors import EvidenceFormatError
from keybroker.attestation.json_bounded import load_bounded_json
from keybroker.attestation.tdx.tcb import TCB_STATUSES

__all__ = [
    "MAX_SIGNED_JSON_SIZE",
    "JsonFields",
    "QeIdentity",
    "QeTcbLevel",
    "TcbInfo",
    "TcbLevel",
    "TdxModule",
    "TdxModuleIdentity",
    "TdxModuleTcbLevel",
    "parse_qe_identity",
    "parse_tcb_info",
]

MAX_SIGNED_JSON_SIZE = 128 * 1024
MAX_JSON_DEPTH = 16
MAX_TCB_LEVELS = 128
MAX_ADVISORY_IDS = 256
MAX_ADVISORY_ID_LENGTH = 64
TCB_COMPONENT_COUNT = 16
QE_IDENTITY_STATUSES = frozenset({"UpToDate", "OutOfDate", "Revoked"})


@dataclass(frozen=True)
class TcbLevel:
    """One platform TCB level of TCB info v3 (TDX)."""

    sgx_components: tuple[int, ...]
    pce_svn: int
    tdx_components: tuple[int, ...]
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class TdxModule:
    """Expected identity of the TDX module (MRSIGNERSEAM, SEAMATTRIBUTES under a mask)."""

    mr_signer: bytes
    attributes: bytes
    attributes_mask: bytes


@dataclass(frozen=True)
class TdxModuleTcbLevel:
    isv_svn: int
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class TdxModuleIdentity:
    """A ``tdxModuleIdentities`` entry: one TDX module major version ("TDX_01")."""

    id: str
    module: TdxModule
    tcb_levels: tuple[TdxModuleTcbLevel, ...]


@dataclass(frozen=True)
class TcbInfo:
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    tcb_evaluation_data_number: int
    tdx_module: TdxModule | None
    tdx_module_identities: tuple[TdxModuleIdentity, ...]
    tcb_levels: tuple[TcbLevel, ...]


@dataclass(frozen=True)
class QeTcbLevel:
    isv_svn: int
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class QeIdentity:
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    misc_select: int
    misc_select_mask: int
    attributes: bytes
    attributes_mask: bytes
    mr_signer: bytes
    isv_prod_id: int
    tcb_levels: tuple[QeTcbLevel, ...]


class JsonFields:
    """Typed access to a JSON object; errors name the dotted path."""

    def __init__(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise EvidenceFormatError(f"collateral {path}: expected a JSON object")
        self._value = value
        self._path = path

    def _get(self, key: str) -> Any:
        if key not in self._value:
            raise EvidenceFormatError(f"collateral {self._path}.{key}: missing")
        return self._value[key]

    def has(self, key: str) -> bool:
        return key in self._value

    def string(self, key: str, *, limit: int = 256) -> str:
        value = self._get(key)
        if not isinstance(value, str) or len(value) > limit:
            raise EvidenceFormatError(
                f"collateral {self._path}.{key}: expected a string of at most {limit} characters"
            )
        return value

    def integer(self, key: str, *, maximum: int = 0xFFFFFFFF) -> int:
        value = self._get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
            raise EvidenceFormatError(
                f"collateral {self._path}.{key}: expected an integer in 0..{maximum}"
            )
        return value

    def hex_bytes(self, key: str, size: int) -> bytes:
        text = self.string(key, limit=2 * size)
        try:
            value = bytes.fromhex(text)
        except ValueError:
            raise EvidenceFormatError(f"collateral {self._path}.{key}: not hex") from None
        if len(value) != size:
            raise EvidenceFormatError(
                f"collateral {self._path}.{key}: expected {size} bytes, got {len(value)}"
            )
        return value

    def timestamp(self, key: str) -> datetime:
        text = self.string(key, limit=40)
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise EvidenceFormatError(
                f"collateral {self._path}.{key}: not an ISO 8601 time"
            ) from None
        if value.tzinfo is None:
            raise EvidenceFormatError(f"collateral {self._path}.{key}: time has no zone")
        return value

    def objects(self, key: str, *, limit: int = MAX_TCB_LEVELS) -> list[JsonFields]:
        value = self._get(key)
        if not isinstance(value, list) or len(value) > limit:
            raise EvidenceFormatError(
                f"collateral {self._path}.{key}: expected a list of at most {limit} items"
            )
        return [
            JsonFields(item, f"{self._path}.{key}[{index}]") for index, item in enumerate(value)
        ]

    def child(self, key: str) -> JsonFields:
        return JsonFields(self._get(key), f"{self._path}.{key}")

    def status(self, key: str, allowed: frozenset[str]) -> str:
        value = self.string(key, limit=64)
        if value not in allowed:
            raise EvidenceFormatError(f"collateral {self._path}.{key}: unknown status {value!r}")
        return value

    def advisory_ids(self) -> tuple[str, ...]:
        if not self.has("advisoryIDs"):
            return ()
        value = self._get("advisoryIDs")
        if (
            not isinstance(value, list)
            or len(value) > MAX_ADVISORY_IDS
            or not all(isinstance(i, str) and len(i) <= MAX_ADVISORY_ID_LENGTH for i in value)
        ):
            raise EvidenceFormatError(
                f"collateral {self._path}.advisoryIDs: expected a list of short strings"
            )
        return tuple(value)

    def svns(self, key: str) -> tuple[int, ...]:
        items = self.objects(key, limit=TCB_COMPONENT_COUNT)
        if len(items) != TCB_COMPONENT_COUNT:
            raise EvidenceFormatError(
                f"collateral {self._path}.{key}: expected {TCB_COMPONENT_COUNT} components"
            )
        return tuple(item.integer("svn", maximum=255) for item in items)


def _load_json(body: bytes, what: str) -> Any:
    return load_bounded_json(
        body, what=f"collateral {what}", max_bytes=MAX_SIGNED_JSON_SIZE, max_depth=MAX_JSON_DEPTH,
        error=EvidenceFormatError,
    )


def _tdx_module(fields: JsonFields) -> TdxModule:
    return TdxModule(
        mr_signer=fields.hex_bytes("mrsigner", 48),
        attributes=fields.hex_bytes("attributes", 8),
        attributes_mask=fields.hex_bytes("attributesMask", 8),
    )


def parse_tcb_info(body: bytes) -> TcbInfo:
    """Parse the signed ``tcbInfo`` JSON text (v3, id "TDX")."""
    fields = JsonFields(_load_json(body, "tcb_info"), "tcbInfo")
    identifier = fields.string("id", limit=16)
    version = fields.integer("version")
    if identifier != "TDX" or version != 3:
        raise EvidenceFormatError(
            f"collateral tcbInfo: id {identifier!r} version {version} is not TDX TCB info v3"
        )
    tcb_type = fields.integer("tcbType")
    if tcb_type != 0:
        raise EvidenceFormatError(f"collateral tcbInfo.tcbType: {tcb_type} is not supported")
    levels = tuple(
        TcbLevel(
            sgx_components=level.child("tcb").svns("sgxtcbcomponents"),
            pce_svn=level.child("tcb").integer("pcesvn", maximum=0xFFFF),
            tdx_components=level.child("tcb").svns("tdxtcbcomponents"),
            tcb_date=level.string("tcbDate", limit=40),
            status=level.status("tcbStatus", TCB_STATUSES),
            advisory_ids=level.advisory_ids(),
        )
        for level in fields.objects("tcbLevels")
    )
    if not levels:
        raise EvidenceFormatError("collateral tcbInfo.tcbLevels: empty")
    identities = ()
    if fields.has("tdxModuleIdentities"):
        identities = tuple(
            TdxModuleIdentity(
                id=entry.string("id", limit=32),
                module=_tdx_module(entry),
                tcb_levels=tuple(
                    TdxModuleTcbLevel(
                        isv_svn=level.child("tcb").integer("isvsvn", maximum=255),
                        tcb_date=level.string("tcbDate", limit=40),
                        status=level.status("tcbStatus", TCB_STATUSES),
                        advisory_ids=level.advisory_ids(),
                    )
                    for level in entry.objects("tcbLevels")
                ),
            )
            for entry in fields.objects("tdxModuleIdentities")
        )
    return TcbInfo(
        id=identifier,
        version=version,
        issue_date=fields.timestamp("issueDate"),
        next_update=fields.timestamp("nextUpdate"),
        fmspc=fields.hex_bytes("fmspc", 6),
        pce_id=fields.hex_bytes("pceId", 2),
        tcb_type=tcb_type,
        tcb_evaluation_data_number=fields.integer("tcbEvaluationDataNumber"),
        tdx_module=_tdx_module(fields.child("tdxModule")) if fields.has("tdxModule") else None,
        tdx_module_identities=identities,
        tcb_levels=levels,
    )


def parse_qe_identity(body: bytes) -> QeIdentity:
    """Parse the signed ``enclaveIdentity`` JSON text (v2, id "TD_QE")."""
    fields = JsonFields(_load_json(body, "qe_identity"), "enclaveIdentity")
    identifier = fields.string("id", limit=16)
    version = fields.integer("version")
    if identifier != "TD_QE" or version != 2:
        raise EvidenceFormatError(
            f"collateral enclaveIdentity: id {identifier!r} version {version} is not TD_QE v2"
        )
    levels = tuple(
        QeTcbLevel(
            isv_svn=level.child("tcb").integer("isvsvn", maximum=0xFFFF),
            tcb_date=level.string("tcbDate", limit=40),
            status=level.status("tcbStatus", QE_IDENTITY_STATUSES),
            advisory_ids=level.advisory_ids(),
        )
        for level in fields.objects("tcbLevels")
    )
    if not levels:
        raise EvidenceFormatError("collateral enclaveIdentity.tcbLevels: empty")
    return QeIdentity(
        id=identifier,
        version=version,
        issue_date=fields.timestamp("issueDate"),
        next_update=fields.timestamp("nextUpdate"),
        tcb_evaluation_data_number=fields.integer("tcbEvaluationDataNumber"),
        misc_select=int.from_bytes(fields.hex_bytes("miscselect", 4), "big"),
        misc_select_mask=int.from_bytes(fields.hex_bytes("miscselectMask", 4), "big"),
        attributes=fields.hex_bytes("attributes", 16),
        attributes_mask=fields.hex_bytes("attributesMask", 16),
        mr_signer=fields.hex_bytes("mrsigner", 32),
        isv_prod_id=fields.integer("isvprodid", maximum=0xFFFF),
        tcb_levels=levels,
    )
